//! The compiled index (Linkerd §2.2–2.6): for every workload and port, the [`PortPolicy`]
//! that governs it — the selected Server (oldest wins a conflict) with its authorizations
//! and routes, or the default policy with its probe route. Compiled when policy, workloads
//! or settings change; a connection asks once ([`PolicyIndex::port`]) and keeps the `Arc`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use serde::Serialize;

use super::{
    authz::{Authentication, Authorization, IdentityPattern},
    defaults::{
        DefaultPolicy, PolicySettings, DEFAULT_POLICY_ANNOTATION, REQUIRE_IDENTITY_ANNOTATION,
    },
    meta::{Meta, GATEWAY_GROUP, POLICY_GROUP},
    net::Network,
    resources::{
        AuthorizationPolicy, IdentitySource, NsName, ParentRef, PolicyTarget, ProxyProtocol,
        Resource, RouteGroup, SazAuthentication, SazServer, Server, ServerPort,
    },
    routes::{GrpcRoute, HttpMatch, HttpRoute, PathMatch},
};

/// A named container port of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    /// `TCP` (default), `UDP`, `SCTP`: only TCP ports can be selected by name.
    pub protocol: String,
}

/// An HTTP probe (liveness, readiness, startup) of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// The path, query included or not (the query is dropped).
    pub path: String,
    pub port: ServerPort,
}

/// What the policy needs to know of a workload (a pod).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyWorkload {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub ports: Vec<ContainerPort>,
    pub probes: Vec<HttpProbe>,
    pub opaque_ports: BTreeSet<u16>,
}

impl PolicyWorkload {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn resolve(&self, port: &ServerPort) -> Vec<u16> {
        match port {
            ServerPort::Number(n) => vec![*n],
            ServerPort::Name(name) => self
                .ports
                .iter()
                .filter(|p| {
                    p.name.as_deref() == Some(name) && p.protocol.eq_ignore_ascii_case("TCP")
                })
                .map(|p| p.port)
                .collect(),
        }
    }
}

/// The policy of one (workload, port): what the proxy enforces.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortPolicy {
    /// `policy.linkerd.io/server/NAME` or `/default/POLICY` (the `srv_*` labels).
    pub server: Meta,
    pub protocol: ProxyProtocol,
    /// Server-level authorizations in the order they are tried: ServerAuthorizations and
    /// AuthorizationPolicies, then the one the access policy implies, then localhost.
    pub authorizations: Vec<Authorization>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
}

impl PortPolicy {
    /// A port nobody may use: no authorization, no route.
    pub fn deny_all() -> PortPolicy {
        PortPolicy {
            server: Meta::default_named(DefaultPolicy::Deny.name()),
            protocol: ProxyProtocol::Detect,
            authorizations: Vec::new(),
            http_routes: Vec::new(),
            grpc_routes: Vec::new(),
        }
    }
}

/// The compiled policy of one workload: its ports with a Server, probes or opaque
/// protocol, and the policy of every other port.
#[derive(Debug, Clone)]
pub struct WorkloadPolicy {
    pub default_policy: DefaultPolicy,
    pub ports: BTreeMap<u16, Arc<PortPolicy>>,
    pub other_ports: Arc<PortPolicy>,
}

impl WorkloadPolicy {
    pub fn port(&self, port: u16) -> Arc<PortPolicy> {
        self.ports.get(&port).unwrap_or(&self.other_ports).clone()
    }
}

/// Every workload's compiled policy, and what the compilation reports (ignored policies,
/// conflicts, bad annotations).
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    workloads: HashMap<String, WorkloadPolicy>,
    pub reports: Vec<String>,
}

impl PolicyIndex {
    /// The policy of `port` on workload `namespace/name`; `None` for an unknown workload.
    pub fn port(&self, workload_key: &str, port: u16) -> Option<Arc<PortPolicy>> {
        self.workloads.get(workload_key).map(|w| w.port(port))
    }

    pub fn workload(&self, workload_key: &str) -> Option<&WorkloadPolicy> {
        self.workloads.get(workload_key)
    }
}

/// The validated policy documents, as a set.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub resources: Vec<Resource>,
}

fn sort_key(r: &super::resources::ObjectId) -> (bool, i64, String) {
    (r.created.is_none(), r.created.unwrap_or(0), r.name.clone())
}

struct Compiler<'a> {
    set: &'a PolicySet,
    settings: &'a PolicySettings,
    /// Each AuthorizationPolicy's authorization, or why it is inert.
    policies: Vec<(&'a AuthorizationPolicy, Option<Authorization>)>,
    reports: Vec<String>,
}

/// Compiles the policy of every workload.
pub fn compile(
    set: &PolicySet,
    workloads: &[PolicyWorkload],
    namespace_annotations: &BTreeMap<String, BTreeMap<String, String>>,
    settings: &PolicySettings,
) -> PolicyIndex {
    let mut c = Compiler {
        set,
        settings,
        policies: Vec::new(),
        reports: Vec::new(),
    };
    let mut aps: Vec<&AuthorizationPolicy> = set
        .resources
        .iter()
        .filter_map(|r| match r {
            Resource::AuthorizationPolicy(p) => Some(p),
            _ => None,
        })
        .collect();
    aps.sort_by_key(|p| (p.id.namespace.clone(), sort_key(&p.id)));
    for ap in aps {
        let authz = c.policy_authorization(ap);
        c.policies.push((ap, authz));
    }
    let mut index = PolicyIndex::default();
    for w in workloads {
        let policy = c.workload(w, namespace_annotations.get(&w.namespace));
        index.workloads.insert(w.key(), policy);
    }
    c.reports.sort();
    c.reports.dedup();
    index.reports = c.reports;
    index
}

impl<'a> Compiler<'a> {
    fn policy_authorization(&mut self, ap: &AuthorizationPolicy) -> Option<Authorization> {
        let at = format!("AuthorizationPolicy {}/{}", ap.id.namespace, ap.id.name);
        let mut authentication = Authentication::Unauthenticated;
        if let Some(r) = &ap.mesh_tls {
            let found = self.set.resources.iter().find_map(|x| match x {
                Resource::MeshTlsAuthentication(m)
                    if m.id.namespace == r.namespace && m.id.name == r.name =>
                {
                    Some(m)
                }
                _ => None,
            });
            let Some(m) = found else {
                self.reports.push(format!(
                    "{at}: could not find MeshTLSAuthentication {} in namespace {}; the policy is ignored (it allows nobody)",
                    r.name, r.namespace
                ));
                return None;
            };
            authentication = Authentication::TlsAuthenticated(
                m.identities
                    .iter()
                    .map(|i| self.identity_pattern(i))
                    .collect(),
            );
        }
        if let Some(NsName { namespace, name }) = &ap.service_account {
            authentication = Authentication::TlsAuthenticated(vec![IdentityPattern::Exact(
                self.settings.service_account_identity(namespace, name),
            )]);
        }
        let mut networks = Network::everywhere();
        if let Some(r) = &ap.network {
            let found = self.set.resources.iter().find_map(|x| match x {
                Resource::NetworkAuthentication(n)
                    if n.id.namespace == r.namespace && n.id.name == r.name =>
                {
                    Some(n)
                }
                _ => None,
            });
            let Some(n) = found else {
                self.reports.push(format!(
                    "{at}: could not find NetworkAuthentication {} in namespace {}; the policy is ignored (it allows nobody)",
                    r.name, r.namespace
                ));
                return None;
            };
            networks = n.networks.clone();
        }
        Some(Authorization {
            meta: Meta::new(POLICY_GROUP, "authorizationpolicy", &ap.id.name),
            networks,
            authentication,
        })
    }

    fn identity_pattern(&self, source: &IdentitySource) -> IdentityPattern {
        match source {
            IdentitySource::Literal(s) => IdentityPattern::parse(s),
            IdentitySource::ServiceAccount { namespace, name } => {
                IdentityPattern::Exact(self.settings.service_account_identity(namespace, name))
            }
            IdentitySource::Namespace(ns) => {
                IdentityPattern::Suffix(self.settings.namespace_identity_suffix(ns))
            }
        }
    }

    fn default_policy(
        &mut self,
        w: &PolicyWorkload,
        ns_annotations: Option<&BTreeMap<String, String>>,
    ) -> DefaultPolicy {
        let sources = [
            ("workload", w.annotations.get(DEFAULT_POLICY_ANNOTATION)),
            (
                "namespace",
                ns_annotations.and_then(|a| a.get(DEFAULT_POLICY_ANNOTATION)),
            ),
        ];
        for (what, value) in sources {
            if let Some(v) = value {
                return v.parse().unwrap_or_else(|e| {
                    self.reports.push(format!(
                        "workload {}: {what} annotation {DEFAULT_POLICY_ANNOTATION}: {e}; deny applies (never a more permissive default)",
                        w.key()
                    ));
                    DefaultPolicy::Deny
                });
            }
        }
        self.settings.default_policy
    }

    fn workload(
        &mut self,
        w: &PolicyWorkload,
        ns_annotations: Option<&BTreeMap<String, String>>,
    ) -> WorkloadPolicy {
        let default_policy = self.default_policy(w, ns_annotations);
        let require_identity = w
            .annotations
            .get(REQUIRE_IDENTITY_ANNOTATION)
            .map(|v| parse_port_list(v))
            .unwrap_or_default();
        // Servers selecting this workload, oldest first; each port goes to the first.
        let mut servers: Vec<&Server> = self
            .set
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::Server(s)
                    if s.id.namespace == w.namespace
                        && s.pod_selector
                            .as_ref()
                            .is_some_and(|sel| sel.matches(&w.labels)) =>
                {
                    Some(s)
                }
                _ => None,
            })
            .collect();
        servers.sort_by_key(|s| sort_key(&s.id));
        let mut by_port: BTreeMap<u16, &Server> = BTreeMap::new();
        for s in &servers {
            for port in w.resolve(&s.port) {
                if let Some(kept) = by_port.get(&port) {
                    self.reports.push(format!(
                        "workload {} port {port}: Server {}/{} also selects it; {} (older, or first by name) governs",
                        w.key(), s.id.namespace, s.id.name, kept.id.name
                    ));
                } else {
                    by_port.insert(port, s);
                }
            }
        }
        let mut ports = BTreeMap::new();
        let probe_ports: BTreeSet<u16> = w.probes.iter().flat_map(|p| w.resolve(&p.port)).collect();
        for (port, server) in &by_port {
            ports.insert(*port, Arc::new(self.server_port(w, server, *port)));
        }
        for port in probe_ports
            .iter()
            .chain(&w.opaque_ports)
            .chain(&require_identity)
        {
            if !ports.contains_key(port) {
                let policy = self.default_port(w, default_policy, &require_identity, *port);
                ports.insert(*port, Arc::new(policy));
            }
        }
        let other_ports = Arc::new(self.default_port(w, default_policy, &BTreeSet::new(), 0));
        WorkloadPolicy {
            default_policy,
            ports,
            other_ports,
        }
    }

    /// The synthesized `default` route (everything) and, if the port has HTTP probes, the
    /// `probe` route (GET on each probe path, open to the probe networks).
    fn default_routes(&self, w: &PolicyWorkload, port: u16) -> Vec<HttpRoute> {
        let mut routes = vec![HttpRoute {
            meta: Meta::default_named("default"),
            hostnames: Vec::new(),
            rules: vec![vec![HttpMatch {
                path: Some(PathMatch::Prefix(String::new())),
                ..HttpMatch::default()
            }]],
            authorizations: Vec::new(),
        }];
        let mut paths: Vec<String> = w
            .probes
            .iter()
            .filter(|p| port != 0 && w.resolve(&p.port).contains(&port))
            .map(|p| p.path.split('?').next().unwrap_or_default().to_string())
            .collect();
        paths.sort();
        paths.dedup();
        if !paths.is_empty() && !self.settings.probe_networks.is_empty() {
            routes.push(HttpRoute {
                meta: Meta::default_named("probe"),
                hostnames: Vec::new(),
                rules: vec![paths
                    .into_iter()
                    .map(|p| HttpMatch {
                        path: Some(PathMatch::Exact(p)),
                        method: Some("GET".into()),
                        ..HttpMatch::default()
                    })
                    .collect()],
                authorizations: vec![Authorization {
                    meta: Meta::default_named("probe"),
                    networks: self.settings.probe_networks.clone(),
                    authentication: Authentication::Unauthenticated,
                }],
            });
        }
        routes
    }

    fn default_grpc_routes() -> Vec<GrpcRoute> {
        vec![GrpcRoute {
            meta: Meta::default_named("default"),
            hostnames: Vec::new(),
            rules: vec![Vec::new()],
            authorizations: Vec::new(),
        }]
    }

    fn default_port(
        &self,
        w: &PolicyWorkload,
        policy: DefaultPolicy,
        require_identity: &BTreeSet<u16>,
        port: u16,
    ) -> PortPolicy {
        let policy = if require_identity.contains(&port) {
            policy.authenticated()
        } else {
            policy
        };
        let mut authorizations: Vec<Authorization> =
            policy.authorization(self.settings).into_iter().collect();
        authorizations.push(Authorization::localhost());
        PortPolicy {
            server: Meta::default_named(policy.name()),
            protocol: if w.opaque_ports.contains(&port) {
                ProxyProtocol::Opaque
            } else {
                ProxyProtocol::Detect
            },
            authorizations,
            http_routes: self.default_routes(w, port),
            grpc_routes: Vec::new(),
        }
    }

    fn server_port(&mut self, w: &PolicyWorkload, s: &Server, port: u16) -> PortPolicy {
        let ns = &s.id.namespace;
        let mut authorizations = Vec::new();
        let mut sazs: Vec<_> = self
            .set
            .resources
            .iter()
            .filter_map(|r| match r {
                Resource::ServerAuthorization(a) if a.id.namespace == *ns => Some(a),
                _ => None,
            })
            .filter(|a| match &a.server {
                SazServer::Name(n) => *n == s.id.name,
                SazServer::Selector(sel) => sel.matches(&s.id.labels),
            })
            .collect();
        sazs.sort_by_key(|a| sort_key(&a.id));
        for a in sazs {
            let authentication = match &a.authentication {
                SazAuthentication::Nobody => continue,
                SazAuthentication::Unauthenticated => Authentication::Unauthenticated,
                SazAuthentication::UnauthenticatedTls => Authentication::TlsUnauthenticated,
                SazAuthentication::MeshTls {
                    identities,
                    service_accounts,
                } => Authentication::TlsAuthenticated(
                    identities
                        .iter()
                        .map(|i| IdentityPattern::parse(i))
                        .chain(service_accounts.iter().map(|sa| {
                            IdentityPattern::Exact(
                                self.settings
                                    .service_account_identity(&sa.namespace, &sa.name),
                            )
                        }))
                        .collect(),
                ),
            };
            authorizations.push(Authorization {
                meta: Meta::new(POLICY_GROUP, "serverauthorization", &a.id.name),
                networks: a
                    .networks
                    .clone()
                    .unwrap_or_else(|| self.settings.cluster_networks.clone()),
                authentication,
            });
        }
        for (ap, authz) in &self.policies {
            let applies = ap.id.namespace == *ns
                && match &ap.target {
                    PolicyTarget::Server(name) => *name == s.id.name,
                    PolicyTarget::Namespace => true,
                    _ => false,
                };
            if applies {
                authorizations.extend(authz.clone());
            }
        }
        authorizations.extend(s.access_policy.authorization(self.settings));
        authorizations.push(Authorization::localhost());

        let grpc_routes = self.grpc_routes(s);
        let http_routes = if s.protocol == ProxyProtocol::Grpc {
            Vec::new()
        } else {
            let routes = self.http_routes(s, !grpc_routes.is_empty());
            if routes.is_empty() {
                self.default_routes(w, port)
            } else {
                routes
            }
        };
        let grpc_routes = if s.protocol == ProxyProtocol::Grpc {
            if grpc_routes.is_empty() {
                Self::default_grpc_routes()
            } else {
                grpc_routes
            }
        } else {
            Vec::new()
        };
        PortPolicy {
            server: Meta::new(POLICY_GROUP, "server", &s.id.name),
            protocol: s.protocol,
            authorizations,
            http_routes,
            grpc_routes,
        }
    }

    /// Whether `parent` attaches a route in `ns` to Server `s`; a wrong reference to the
    /// Server is reported.
    fn attaches(&mut self, route: &str, ns: &str, parent: &ParentRef, s: &Server) -> bool {
        if !(parent.kind.eq_ignore_ascii_case("Server")
            && parent.group.eq_ignore_ascii_case(POLICY_GROUP)
            && parent.name == s.id.name)
        {
            return false;
        }
        let problem = if parent.namespace.as_deref().is_some_and(|n| n != ns) {
            Some("route resource may not reference a parent Server in an other namespace")
        } else if parent.port.is_some() {
            Some("route resource may not reference a parent Server by port")
        } else if parent.section_name.is_some() {
            Some("route resource may not reference a parent Server by section name")
        } else {
            None
        };
        if let Some(p) = problem {
            self.reports.push(format!("{route}: {p}; not attached"));
            return false;
        }
        true
    }

    fn route_authorizations(&self, ns: &str, target: &PolicyTarget) -> Vec<Authorization> {
        self.policies
            .iter()
            .filter(|(ap, _)| ap.id.namespace == ns && ap.target == *target)
            .filter_map(|(_, a)| a.clone())
            .collect()
    }

    /// Whether a route (`kind` `HTTPRoute` or `GRPCRoute`, for reports) of the Server's
    /// namespace has a parent that attaches it to Server `s`, and is not ignored (which is
    /// reported).
    fn route_attaches(
        &mut self,
        kind: &str,
        s: &Server,
        id: &super::resources::ObjectId,
        parents: &[ParentRef],
        ignored: Option<&String>,
    ) -> bool {
        let ns = &s.id.namespace;
        if &id.namespace != ns {
            return false;
        }
        let label = format!("{kind} {ns}/{}", id.name);
        if !parents.iter().any(|p| self.attaches(&label, ns, p, s)) {
            return false;
        }
        if let Some(why) = ignored {
            self.reports.push(format!("{label}: {why}; ignored"));
            return false;
        }
        true
    }

    fn http_routes(&mut self, s: &Server, has_grpc: bool) -> Vec<HttpRoute> {
        let ns = s.id.namespace.clone();
        let set = self.set;
        let mut found = Vec::new();
        for r in &set.resources {
            let Resource::HttpRoute(route) = r else {
                continue;
            };
            let (id, parents) = (&route.id, &route.parent_refs);
            if !self.route_attaches("HTTPRoute", s, id, parents, route.ignored.as_ref()) {
                continue;
            }
            if has_grpc {
                self.reports.push(format!(
                    "HTTPRoute {ns}/{}: Server {} has GRPCRoutes, which take precedence; not attached",
                    id.name, s.id.name
                ));
                continue;
            }
            found.push(route);
        }
        found.sort_by_key(|r| sort_key(&r.id));
        found
            .into_iter()
            .map(|route| {
                let gateway = route.group == RouteGroup::Gateway;
                HttpRoute {
                    meta: Meta::new(
                        if gateway { GATEWAY_GROUP } else { POLICY_GROUP },
                        "HTTPRoute",
                        &route.id.name,
                    ),
                    hostnames: route.hostnames.clone(),
                    rules: route.rules.clone(),
                    authorizations: self.route_authorizations(
                        &ns,
                        &PolicyTarget::HttpRoute {
                            gateway,
                            name: route.id.name.clone(),
                        },
                    ),
                }
            })
            .collect()
    }

    fn grpc_routes(&mut self, s: &Server) -> Vec<GrpcRoute> {
        let ns = s.id.namespace.clone();
        let set = self.set;
        let mut found = Vec::new();
        for r in &set.resources {
            let Resource::GrpcRoute(route) = r else {
                continue;
            };
            let (id, parents) = (&route.id, &route.parent_refs);
            if self.route_attaches("GRPCRoute", s, id, parents, route.ignored.as_ref()) {
                found.push(route);
            }
        }
        found.sort_by_key(|r| sort_key(&r.id));
        found
            .into_iter()
            .map(|route| GrpcRoute {
                meta: Meta::new(GATEWAY_GROUP, "GRPCRoute", &route.id.name),
                hostnames: route.hostnames.clone(),
                rules: route.rules.clone(),
                authorizations: self
                    .route_authorizations(&ns, &PolicyTarget::GrpcRoute(route.id.name.clone())),
            })
            .collect()
    }
}

/// `8080,9000-9002`: ports and ranges; anything unreadable is left out.
fn parse_port_list(s: &str) -> BTreeSet<u16> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(p) = part.parse::<u16>() {
                    out.insert(p);
                }
            }
        }
    }
    out.remove(&0);
    out
}
