//! The standalone file's schema: the agent's settings (turned into
//! [`Settings`](crate::settings::Settings)) and the mesh state (workloads and services, turned
//! into a [`State`](crate::state::State) by [`super::to_state`]).
//!
//! Parsing is strict (unknown fields are errors, so a typo never silently disables
//! something) and validation checks what the agent would otherwise trip over later:
//! duplicate names and addresses, network-namespace and cgroup paths that are not what they
//! claim to be. Every error names the file and the offending field or workload.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    kube_names::{is_dns_label, is_dns_subdomain},
    policy::{
        compile::{ContainerPort, HttpProbe},
        defaults::{InvalidMode, DEFAULT_POLICY_ANNOTATION, REQUIRE_IDENTITY_ANNOTATION},
        document::DocumentError,
        net::{Cidr, Network},
        resources::ServerPort,
        DefaultPolicy,
    },
    settings::{
        IdentitySettings, InboundSettings, LimitSettings, Settings, DEFAULT_ADMIN,
        DEFAULT_BPFFS_ROOT, DEFAULT_CERTIFICATE_TTL, DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS_PER_POD,
        DEFAULT_MAX_HANDSHAKES, DEFAULT_MAX_HANDSHAKES_PER_POD, DEFAULT_TRUST_DOMAIN,
    },
    state::DEFAULT_OPAQUE_PORTS,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {source}")]
    Invalid { path: PathBuf, source: Invalid },
    /// Policy documents the file names were refused; nothing of the file is applied.
    #[error("config file {path}: policy: {}", PolicyRefused(refused))]
    Policy {
        path: PathBuf,
        refused: Vec<DocumentError>,
    },
}

/// Policy documents' refusals, one after the other.
pub(crate) struct PolicyRefused<'a>(pub &'a [DocumentError]);

impl std::fmt::Display for PolicyRefused<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        write!(f, "{n} document{} refused: ", if n == 1 { "" } else { "s" })?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// What is wrong with a config file that parsed; `at` names the entry
/// (`workloads[1] (default/web)`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Invalid {
    #[error("node: must not be empty")]
    EmptyNode,
    #[error("admin: {0} is not a loopback address: whoever can reach it can read every workload's requests (/tap), connections and configuration, and change the log level; use 127.0.0.1:15000 (or another loopback address), or set adminAllowNonLoopback: true to expose it on purpose")]
    AdminNotLoopback(SocketAddr),
    #[error("trustDomain {0:?} is not a DNS name")]
    TrustDomain(String),
    #[error("identity.certificateTtlSeconds must be at least 10")]
    CertificateTtl,
    #[error("handshakeTimeoutMs must be at least 100")]
    HandshakeTimeout,
    #[error("inbound.deliveryMark must not be 0 (0 is an unmarked packet)")]
    ZeroDeliveryMark,
    #[error("{field} must be at least 1")]
    ZeroLimit { field: &'static str },
    #[error("{field} ({value}) is more than {whole} ({whole_value}): one pod could take the whole node's budget")]
    PodLimitAboveNode {
        field: &'static str,
        value: usize,
        whole: &'static str,
        whole_value: usize,
    },
    #[error("{field}: {} is not a readable file", path.display())]
    NotAFile { field: &'static str, path: PathBuf },
    #[error("{at}: {field} {value:?} is not a valid Kubernetes name")]
    Name {
        at: String,
        field: &'static str,
        value: String,
    },
    #[error("{at}: duplicate workload {key}")]
    DuplicateWorkload { at: String, key: String },
    #[error("{at}: ips must list at least one address")]
    NoAddress { at: String },
    #[error("{at}: {ip} cannot be a workload address")]
    NotAWorkloadAddress { at: String, ip: IpAddr },
    #[error("{at}: address {ip} is also used by workload {other}")]
    AddressInUse {
        at: String,
        ip: IpAddr,
        other: String,
    },
    #[error("{at}: {field} is required for a workload on this node")]
    Required { at: String, field: &'static str },
    #[error("{at}: {field} {}: {problem}", path.display())]
    Filesystem {
        at: String,
        field: &'static str,
        path: PathBuf,
        problem: FsProblem,
    },
    #[error("{at}: port 0 cannot be skipped")]
    SkipPortZero { at: String },
    #[error("{at}: name and namespace must be valid Kubernetes names")]
    ServiceName { at: String },
    #[error("{at}: vip {vip} is also the address of workload {workload}")]
    VipInUse {
        at: String,
        vip: IpAddr,
        workload: String,
    },
    #[error("{at}: ports must list at least one port")]
    NoPorts { at: String },
    #[error("{at}: port 0 is not a valid service port")]
    PortZero { at: String },
    #[error("{at}: {vip}:{port} is defined twice")]
    DuplicatePort { at: String, vip: IpAddr, port: u16 },
    #[error("defaultInboundPolicy: {0} (one of {names})", names = policy_names())]
    DefaultInboundPolicy(InvalidMode),
    #[error("clusterNetworks[{index}]: {value:?} is not a network (ADDRESS/PREFIX or an address)")]
    ClusterNetwork { index: usize, value: String },
    #[error("{at}: name {value:?} is not a valid namespace name")]
    NamespaceName { at: String, value: String },
    #[error("{at}: namespace {name} is listed twice")]
    DuplicateNamespace { at: String, name: String },
    #[error("{at}: annotations.{key:?}: {source} (one of {names})", names = policy_names())]
    Annotation {
        at: String,
        key: &'static str,
        source: InvalidMode,
    },
    #[error("{at}: annotations.{key:?}: {part:?} is not a port or a range of ports (e.g. 8080,9000-9010)")]
    PortList {
        at: String,
        key: &'static str,
        part: String,
    },
    #[error("{at}: {field}: {problem}")]
    Port {
        at: String,
        field: String,
        problem: PortProblem,
    },
}

/// What is wrong with a workload's container port or probe.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PortProblem {
    #[error("port 0 is not a valid container port")]
    Zero,
    #[error("{0:?} is not a valid port name (at most 15 lowercase letters, digits and '-', at least one letter, no '-' at either end or next to another)")]
    Name(String),
    #[error("{name:?} is also the name of ports[{first}]")]
    DuplicateName { name: String, first: usize },
    #[error("{0:?} is not TCP, UDP or SCTP")]
    Protocol(String),
    #[error("{0:?} does not begin with /")]
    Path(String),
    #[error("no TCP port of the workload is named {0:?} (see its ports)")]
    UnknownName(String),
}

fn policy_names() -> String {
    DefaultPolicy::ALL.map(DefaultPolicy::name).join(", ")
}

/// Kubernetes' `IANA_SVC_NAME`, the rule for a container port's name.
fn is_port_name(name: &str) -> bool {
    name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// Why a path is not the kind of file a field needs.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FsProblem {
    #[error("does not exist")]
    Missing,
    #[error("{}", .0.desc())]
    Stat(nix::errno::Errno),
    #[error("is not {0}")]
    WrongKind(&'static str),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct FileConfig {
    /// This node's name; workloads with this `node` (or none) are enrolled here.
    pub node: String,
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Allows `admin` on an address that is not loopback (refused without it: the API has
    /// no authentication).
    #[serde(default)]
    pub admin_allow_non_loopback: bool,
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// On SIGTERM, how long open connections may go on before they are closed.
    #[serde(default = "default_drain_timeout_seconds")]
    pub drain_timeout_seconds: u64,
    /// How long the TLS and HTTP/2 handshakes of an HBONE connection may take together.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Budgets of proxied connections and TLS handshakes.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How inbound connections are delivered to the app.
    #[serde(default)]
    pub inbound: InboundConfig,
    /// The trust domain of workload identities (`spiffe://<trustDomain>/ns/NS/sa/SA`).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Mutual TLS between workloads: where the trust anchors and the issuer are. Without
    /// it, captured connections are passed through in plaintext.
    #[serde(default)]
    pub identity: Option<IdentityConfig>,
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub workloads: Vec<WorkloadConfig>,
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub services: Vec<ServiceConfig>,
    /// Files and directories of policy documents (multi-document YAML, as for `kubectl
    /// apply -f`); relative paths are relative to the config file's directory.
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub policy: Vec<PathBuf>,
    /// The default inbound policy of ports no `Server` selects (Linkerd's
    /// `proxy.defaultInboundPolicy`).
    #[serde(default)]
    pub default_inbound_policy: Option<String>,
    /// The networks of the `cluster-*` default policies (Linkerd's `clusterNetworks`).
    #[serde(default)]
    pub cluster_networks: Option<Vec<String>>,
    /// Namespaces with annotations (`config.linkerd.io/default-inbound-policy`).
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub namespaces: Vec<NamespaceConfig>,
}

/// `namespaces[]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct NamespaceConfig {
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `workloads[].ports[]`, as a Kubernetes container port.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ContainerPortConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u16,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `workloads[].probes[]`: an HTTP probe (liveness, readiness or startup).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ProbeConfig {
    pub path: String,
    pub port: PortRef,
}

/// A port by number or by the name of one of the workload's container ports.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub(super) enum PortRef {
    Number(u16),
    Name(String),
}

/// `inbound:` (see `docs/configuration.md`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct InboundConfig {
    /// Show the app the client's own address (default) rather than the pod's.
    #[serde(default = "default_true")]
    pub preserve_source_address: bool,
    /// Mark of the agent's delivery sockets (a non-zero 32-bit value).
    #[serde(default = "default_delivery_mark")]
    pub delivery_mark: u32,
}

impl Default for InboundConfig {
    fn default() -> Self {
        InboundConfig {
            preserve_source_address: true,
            delivery_mark: default_delivery_mark(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_delivery_mark() -> u32 {
    crate::pod_routing::DEFAULT_DELIVERY_MARK
}

/// `limits:` (see `docs/configuration.md`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct LimitsConfig {
    /// Sockets of every pod's proxied connections together (a relayed connection holds
    /// two, one over HBONE one); derived from the open-files limit when absent.
    #[serde(default)]
    pub max_sockets: Option<usize>,
    /// One pod's proxied connections in one direction (inbound: plaintext, HBONE
    /// connections and tunnels; outbound: the pod's own).
    #[serde(default = "default_max_connections_per_pod")]
    pub max_connections_per_pod: usize,
    /// TLS handshakes in progress on port 15008, every pod together.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// TLS handshakes in progress on one pod's port 15008.
    #[serde(default = "default_max_handshakes_per_pod")]
    pub max_handshakes_per_pod: usize,
    /// One pod's captured connections in flight in the kernel (review M4).
    #[serde(default = "default_max_pending_connects_per_pod")]
    pub max_pending_connects_per_pod: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = LimitSettings::default();
        LimitsConfig {
            max_sockets: d.max_sockets,
            max_connections_per_pod: d.max_connections_per_pod,
            max_handshakes: d.max_handshakes,
            max_handshakes_per_pod: d.max_handshakes_per_pod,
            max_pending_connects_per_pod: d.max_pending_connects_per_pod,
        }
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), Invalid> {
        for (field, value) in [
            ("limits.maxSockets", self.max_sockets.unwrap_or(1)),
            ("limits.maxConnectionsPerPod", self.max_connections_per_pod),
            ("limits.maxHandshakes", self.max_handshakes),
            ("limits.maxHandshakesPerPod", self.max_handshakes_per_pod),
            (
                "limits.maxPendingConnectsPerPod",
                self.max_pending_connects_per_pod as usize,
            ),
        ] {
            if value == 0 {
                return Err(Invalid::ZeroLimit { field });
            }
        }
        if let Some(whole) = self.max_sockets {
            if self.max_connections_per_pod > whole {
                return Err(Invalid::PodLimitAboveNode {
                    field: "limits.maxConnectionsPerPod",
                    value: self.max_connections_per_pod,
                    whole: "limits.maxSockets",
                    whole_value: whole,
                });
            }
        }
        let node = meshd_common::ORIG_DST_ENTRIES as usize;
        if self.max_pending_connects_per_pod as usize > node {
            return Err(Invalid::PodLimitAboveNode {
                field: "limits.maxPendingConnectsPerPod",
                value: self.max_pending_connects_per_pod as usize,
                whole: "the node's original-destination map",
                whole_value: node,
            });
        }
        if self.max_handshakes_per_pod > self.max_handshakes {
            return Err(Invalid::PodLimitAboveNode {
                field: "limits.maxHandshakesPerPod",
                value: self.max_handshakes_per_pod,
                whole: "limits.maxHandshakes",
                whole_value: self.max_handshakes,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct IdentityConfig {
    /// PEM bundle of one or more trust anchors (two during an anchor rotation).
    pub trust_anchors: PathBuf,
    /// The issuer (intermediate CA) certificate, PEM, signed by a trust anchor.
    pub issuer_certificate: PathBuf,
    /// The issuer's private key, PEM (PKCS#8).
    pub issuer_key: PathBuf,
    /// Lifetime of workload certificates; renewed at half-life.
    #[serde(default = "default_cert_ttl_seconds")]
    pub certificate_ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct WorkloadConfig {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The node the workload runs on; defaults to this node.
    #[serde(default)]
    pub node: Option<String>,
    /// The owning deployment (Linkerd's `deployment` metric label); defaults to the `app`
    /// label, else the name.
    #[serde(default)]
    pub deployment: Option<String>,
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    /// Network namespace file, e.g. `/run/netns/web-1` (required on this node).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// cgroup v2 directory holding the workload's processes (required on this node).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Inbound ports not steered to the agent (Linkerd's skip-inbound-ports).
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub skip_inbound_ports: BTreeSet<u16>,
    /// Outbound destination ports that bypass the agent (Linkerd's skip-outbound-ports).
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub skip_outbound_ports: BTreeSet<u16>,
    /// Ports whose traffic is never parsed as HTTP (server-speaks-first protocols; Linkerd's
    /// opaque-ports). Defaults to Linkerd's list.
    #[serde(default)]
    pub opaque_ports: Option<BTreeSet<u16>>,
    /// The pod's annotations (`config.linkerd.io/default-inbound-policy`, ...).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The containers' ports (a `Server` may select a port by name).
    #[serde(default)]
    pub ports: Vec<ContainerPortConfig>,
    /// HTTP probes (the default policies allow their paths).
    #[serde(default)]
    pub probes: Vec<ProbeConfig>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ServiceConfig {
    pub name: String,
    pub namespace: String,
    pub vip: IpAddr,
    pub ports: Vec<ServicePortConfig>,
    /// Workloads whose labels include all of these are endpoints.
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub selector: BTreeMap<String, String>,
    /// Additional endpoint addresses (for example pods that are not in this file).
    #[serde(default, deserialize_with = "crate::yaml::null_as_default")]
    pub endpoints: Vec<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ServicePortConfig {
    pub port: u16,
    /// Port on the endpoints; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
}

fn default_admin() -> SocketAddr {
    DEFAULT_ADMIN.parse().expect("valid default admin address")
}
fn default_bpffs() -> PathBuf {
    PathBuf::from(DEFAULT_BPFFS_ROOT)
}
fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT.as_millis() as u64
}
fn default_drain_timeout_seconds() -> u64 {
    DEFAULT_DRAIN_TIMEOUT.as_secs()
}
fn default_handshake_timeout_ms() -> u64 {
    DEFAULT_HANDSHAKE_TIMEOUT.as_millis() as u64
}
fn default_max_connections_per_pod() -> usize {
    DEFAULT_MAX_CONNECTIONS_PER_POD
}
fn default_max_pending_connects_per_pod() -> u32 {
    meshd_common::DEFAULT_MAX_PENDING
}
fn default_max_handshakes() -> usize {
    DEFAULT_MAX_HANDSHAKES
}
fn default_max_handshakes_per_pod() -> usize {
    DEFAULT_MAX_HANDSHAKES_PER_POD
}
fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.into()
}
fn default_cert_ttl_seconds() -> u64 {
    DEFAULT_CERTIFICATE_TTL.as_secs()
}

impl WorkloadConfig {
    /// `namespace/name`, the workload's unique key.
    pub(super) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub(super) fn deployment(&self) -> String {
        self.deployment
            .clone()
            .or_else(|| self.labels.get("app").cloned())
            .unwrap_or_else(|| self.name.clone())
    }

    pub(super) fn opaque_ports(&self) -> BTreeSet<u16> {
        self.opaque_ports
            .clone()
            .unwrap_or_else(|| DEFAULT_OPAQUE_PORTS.into_iter().collect())
    }

    pub(super) fn is_on(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }

    /// `ports`, typed (validated: every protocol is known).
    pub(super) fn container_ports(&self) -> Vec<ContainerPort> {
        self.ports
            .iter()
            .map(|p| ContainerPort {
                name: p.name.clone(),
                port: p.container_port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
            .collect()
    }

    pub(super) fn http_probes(&self) -> Vec<HttpProbe> {
        self.probes
            .iter()
            .map(|p| HttpProbe {
                path: p.path.clone(),
                port: match &p.port {
                    PortRef::Number(n) => ServerPort::Number(*n),
                    PortRef::Name(n) => ServerPort::Name(n.clone()),
                },
            })
            .collect()
    }

    /// The checks of `annotations`, `ports` and `probes`.
    fn validate_policy_fields(&self, at: &str) -> Result<(), Invalid> {
        check_annotations(at, &self.annotations)?;
        let port_error = |field: String, problem| Invalid::Port {
            at: at.to_string(),
            field,
            problem,
        };
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, p) in self.ports.iter().enumerate() {
            if p.container_port == 0 {
                return Err(port_error(
                    format!("ports[{i}].containerPort"),
                    PortProblem::Zero,
                ));
            }
            if let Some(protocol) = &p.protocol {
                if !["TCP", "UDP", "SCTP"].contains(&protocol.as_str()) {
                    return Err(port_error(
                        format!("ports[{i}].protocol"),
                        PortProblem::Protocol(protocol.clone()),
                    ));
                }
            }
            if let Some(name) = &p.name {
                if !is_port_name(name) {
                    return Err(port_error(
                        format!("ports[{i}].name"),
                        PortProblem::Name(name.clone()),
                    ));
                }
                if let Some(first) = names.insert(name, i) {
                    return Err(port_error(
                        format!("ports[{i}].name"),
                        PortProblem::DuplicateName {
                            name: name.clone(),
                            first,
                        },
                    ));
                }
            }
        }
        for (i, probe) in self.probes.iter().enumerate() {
            if !probe.path.starts_with('/') {
                return Err(port_error(
                    format!("probes[{i}].path"),
                    PortProblem::Path(probe.path.clone()),
                ));
            }
            match &probe.port {
                PortRef::Number(0) => {
                    return Err(port_error(format!("probes[{i}].port"), PortProblem::Zero))
                }
                PortRef::Number(_) => {}
                PortRef::Name(name) => {
                    let tcp = self.ports.iter().any(|p| {
                        p.name.as_deref() == Some(name.as_str())
                            && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
                    });
                    if !tcp {
                        return Err(port_error(
                            format!("probes[{i}].port"),
                            PortProblem::UnknownName(name.clone()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `part` of a port list annotation is a port (`8080`) or a range (`9000-9010`).
fn is_port_or_range(part: &str) -> bool {
    let port = |p: &str| p.trim().parse::<u16>().is_ok_and(|p| p > 0);
    match part.split_once('-') {
        Some((a, b)) => {
            port(a) && port(b) && a.trim().parse::<u16>().ok() <= b.trim().parse::<u16>().ok()
        }
        None => port(part),
    }
}

/// The policy annotations, checked: a bad `config.linkerd.io/default-inbound-policy` is
/// refused here rather than compiled as `deny`, and a bad entry of
/// `config.linkerd.io/proxy-require-identity-inbound-ports` rather than dropped (which
/// would require identity on fewer ports): the file is the user's to fix.
fn check_annotations(at: &str, annotations: &BTreeMap<String, String>) -> Result<(), Invalid> {
    if let Some(value) = annotations.get(REQUIRE_IDENTITY_ANNOTATION) {
        if let Some(part) = value.split(',').find(|p| !is_port_or_range(p)) {
            return Err(Invalid::PortList {
                at: at.to_string(),
                key: REQUIRE_IDENTITY_ANNOTATION,
                part: part.to_string(),
            });
        }
    }
    if let Some(value) = annotations.get(DEFAULT_POLICY_ANNOTATION) {
        value
            .parse::<DefaultPolicy>()
            .map_err(|source| Invalid::Annotation {
                at: at.to_string(),
                key: DEFAULT_POLICY_ANNOTATION,
                source,
            })?;
    }
    Ok(())
}

impl FileConfig {
    /// `defaultInboundPolicy` (validated).
    pub(super) fn default_policy(&self) -> DefaultPolicy {
        self.default_inbound_policy
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or(DefaultPolicy::AllUnauthenticated)
    }

    /// `clusterNetworks` (validated), Linkerd's list when absent.
    pub(super) fn cluster_networks(&self) -> Vec<Network> {
        match &self.cluster_networks {
            None => crate::policy::PolicySettings::default().cluster_networks,
            Some(nets) => nets
                .iter()
                .filter_map(|n| Cidr::parse(n))
                .map(Network::new)
                .collect(),
        }
    }

    /// Each listed namespace's annotations.
    pub(super) fn namespace_annotations(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        self.namespaces
            .iter()
            .map(|n| (n.name.clone(), n.annotations.clone()))
            .collect()
    }

    /// `policy`, relative paths resolved against the directory of `config_path`.
    pub(super) fn policy_paths(&self, config_path: &Path) -> Vec<PathBuf> {
        let dir = config_path.parent().unwrap_or(Path::new(""));
        self.policy.iter().map(|p| dir.join(p)).collect()
    }

    /// The agent's settings in this file.
    pub(super) fn settings(&self) -> Settings {
        Settings {
            node: self.node.clone(),
            admin: self.admin,
            bpffs: self.bpffs.clone(),
            connect_timeout: std::time::Duration::from_millis(self.connect_timeout_ms),
            drain_timeout: std::time::Duration::from_secs(self.drain_timeout_seconds),
            handshake_timeout: std::time::Duration::from_millis(self.handshake_timeout_ms),
            limits: LimitSettings {
                max_sockets: self.limits.max_sockets,
                max_connections_per_pod: self.limits.max_connections_per_pod,
                max_handshakes: self.limits.max_handshakes,
                max_handshakes_per_pod: self.limits.max_handshakes_per_pod,
                max_pending_connects_per_pod: self.limits.max_pending_connects_per_pod,
            },
            inbound: InboundSettings {
                preserve_source_address: self.inbound.preserve_source_address,
                delivery_mark: self.inbound.delivery_mark,
            },
            trust_domain: self.trust_domain.clone(),
            identity: self.identity.as_ref().map(|id| IdentitySettings {
                trust_anchors: id.trust_anchors.clone(),
                issuer_certificate: id.issuer_certificate.clone(),
                issuer_key: id.issuer_key.clone(),
                certificate_ttl: std::time::Duration::from_secs(id.certificate_ttl_seconds),
            }),
        }
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub(super) fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        let config: FileConfig =
            crate::yaml::from_document(text, 1).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        config.validate().map_err(|source| ConfigError::Invalid {
            path: path.to_owned(),
            source,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.node.trim().is_empty() {
            return Err(Invalid::EmptyNode);
        }
        if !self.admin.ip().to_canonical().is_loopback() && !self.admin_allow_non_loopback {
            return Err(Invalid::AdminNotLoopback(self.admin));
        }
        if !is_dns_subdomain(&self.trust_domain) {
            return Err(Invalid::TrustDomain(self.trust_domain.clone()));
        }
        if self.handshake_timeout_ms < 100 {
            return Err(Invalid::HandshakeTimeout);
        }
        self.limits.validate()?;
        if self.inbound.delivery_mark == 0 {
            return Err(Invalid::ZeroDeliveryMark);
        }
        if let Some(id) = &self.identity {
            if id.certificate_ttl_seconds < 10 {
                return Err(Invalid::CertificateTtl);
            }
            for (field, path) in [
                ("identity.trustAnchors", &id.trust_anchors),
                ("identity.issuerCertificate", &id.issuer_certificate),
                ("identity.issuerKey", &id.issuer_key),
            ] {
                if !path.is_file() {
                    return Err(Invalid::NotAFile {
                        field,
                        path: path.clone(),
                    });
                }
            }
        }
        if let Some(p) = &self.default_inbound_policy {
            p.parse::<DefaultPolicy>()
                .map_err(Invalid::DefaultInboundPolicy)?;
        }
        for (index, value) in self.cluster_networks.iter().flatten().enumerate() {
            if Cidr::parse(value).is_none() {
                return Err(Invalid::ClusterNetwork {
                    index,
                    value: value.clone(),
                });
            }
        }
        let mut namespaces = BTreeSet::new();
        for (i, n) in self.namespaces.iter().enumerate() {
            let at = format!("namespaces[{i}] ({})", n.name);
            if !is_dns_label(&n.name) {
                return Err(Invalid::NamespaceName {
                    at,
                    value: n.name.clone(),
                });
            }
            if !namespaces.insert(&n.name) {
                return Err(Invalid::DuplicateNamespace {
                    at,
                    name: n.name.clone(),
                });
            }
            check_annotations(&at, &n.annotations)?;
        }
        let mut names = BTreeSet::new();
        let mut ips: HashMap<IpAddr, String> = HashMap::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let at = format!("workloads[{i}] ({})", w.key());
            for (field, value) in [
                ("name", &w.name),
                ("namespace", &w.namespace),
                ("serviceAccount", &w.service_account),
            ] {
                let valid = if field == "name" {
                    is_dns_subdomain(value)
                } else {
                    is_dns_label(value)
                };
                if !valid {
                    return Err(Invalid::Name {
                        at,
                        field,
                        value: value.clone(),
                    });
                }
            }
            if !names.insert(w.key()) {
                return Err(Invalid::DuplicateWorkload { at, key: w.key() });
            }
            if w.ips.is_empty() {
                return Err(Invalid::NoAddress { at });
            }
            for ip in &w.ips {
                if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
                    return Err(Invalid::NotAWorkloadAddress { at, ip: *ip });
                }
                if let Some(other) = ips.insert(*ip, w.key()) {
                    return Err(Invalid::AddressInUse { at, ip: *ip, other });
                }
            }
            if w.is_on(&self.node) {
                for (field, path, magic, kind) in [
                    (
                        "netns",
                        &w.netns,
                        NSFS_MAGIC,
                        "a network namespace file (nsfs)",
                    ),
                    (
                        "cgroup",
                        &w.cgroup,
                        CGROUP2_SUPER_MAGIC,
                        "a cgroup v2 directory",
                    ),
                ] {
                    let Some(path) = path else {
                        return Err(Invalid::Required { at, field });
                    };
                    check_fs(path, magic, kind).map_err(|problem| Invalid::Filesystem {
                        at: at.clone(),
                        field,
                        path: path.clone(),
                        problem,
                    })?;
                }
            }
            for p in w.skip_inbound_ports.iter().chain(&w.skip_outbound_ports) {
                if *p == 0 {
                    return Err(Invalid::SkipPortZero { at });
                }
            }
            w.validate_policy_fields(&at)?;
        }
        let mut vips = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}] ({}/{})", s.namespace, s.name);
            if !is_dns_label(&s.name) || !is_dns_label(&s.namespace) {
                return Err(Invalid::ServiceName { at });
            }
            if let Some(w) = ips.get(&s.vip) {
                return Err(Invalid::VipInUse {
                    at,
                    vip: s.vip,
                    workload: w.clone(),
                });
            }
            if s.ports.is_empty() {
                return Err(Invalid::NoPorts { at });
            }
            for p in &s.ports {
                if p.port == 0 || p.target_port == Some(0) {
                    return Err(Invalid::PortZero { at });
                }
                if !vips.insert((s.vip, p.port)) {
                    return Err(Invalid::DuplicatePort {
                        at,
                        vip: s.vip,
                        port: p.port,
                    });
                }
            }
        }
        Ok(())
    }
}

const NSFS_MAGIC: i64 = 0x6e73_6673;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn check_fs(path: &Path, magic: i64, kind: &'static str) -> Result<(), FsProblem> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| match e {
        nix::errno::Errno::ENOENT => FsProblem::Missing,
        e => FsProblem::Stat(e),
    })?;
    if st.filesystem_type().0 as i64 != magic {
        return Err(FsProblem::WrongKind(kind));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("test.yaml"), text)
    }

    const REMOTE_ONLY: &str = "
node: n1
workloads:
  - name: web-1
    namespace: default
    serviceAccount: web
    node: n2
    ips: [10.0.0.1]
";

    /// Sections written with nothing under them are empty, as with serde_yaml (people
    /// leave `services:` or `workloads:` empty, and generated configs do too); a section of
    /// the wrong type is still an error.
    #[test]
    fn empty_sections_are_empty() {
        let c = parse("node: n1\nworkloads:\nservices:\n").expect("empty sections");
        assert!(c.workloads.is_empty() && c.services.is_empty());
        let c = parse(
            "node: n1\nworkloads:\n  - name: a\n    namespace: d\n    serviceAccount: a\n    node: n2\n    ips: [10.0.0.1]\n    labels:\n    skipInboundPorts:\n",
        )
        .expect("empty labels and ports");
        assert!(c.workloads[0].labels.is_empty());
        let e = parse("node: n1\nservices: 5\n").expect_err("not a list");
        assert!(e.to_string().contains("services"), "{e}");
    }

    #[test]
    fn parses_defaults() {
        let c = parse(REMOTE_ONLY).unwrap();
        assert_eq!(c.admin.to_string(), DEFAULT_ADMIN);
        assert_eq!(c.bpffs, PathBuf::from(DEFAULT_BPFFS_ROOT));
        assert!(!c.workloads[0].is_on("n1"));
    }

    /// Review case G102: an admin address other pods can reach is refused unless allowed
    /// explicitly.
    #[test]
    fn a_non_loopback_admin_needs_the_explicit_setting() {
        for admin in ["0.0.0.0:15000", "10.0.0.5:15000", "\"[::]:15000\""] {
            let text = REMOTE_ONLY.replace("node: n1\n", &format!("node: n1\nadmin: {admin}\n"));
            let e = parse(&text).expect_err(admin).to_string();
            assert!(
                e.contains("is not a loopback address")
                    && e.contains("adminAllowNonLoopback: true"),
                "{e}"
            );
            let allowed = text.replace("node: n1\n", "node: n1\nadminAllowNonLoopback: true\n");
            assert!(parse(&allowed).is_ok(), "{admin}");
        }
        for admin in [
            "127.0.0.2:15000",
            "\"[::1]:15000\"",
            "\"[::ffff:127.0.0.1]:15000\"",
        ] {
            let text = REMOTE_ONLY.replace("node: n1\n", &format!("node: n1\nadmin: {admin}\n"));
            assert!(parse(&text).is_ok(), "{admin}");
        }
    }

    #[test]
    fn drain_timeout_defaults_and_is_read() {
        let settings = parse(REMOTE_ONLY).unwrap().settings();
        assert_eq!(settings.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        let text = REMOTE_ONLY.replace("node: n1\n", "node: n1\ndrainTimeoutSeconds: 2\n");
        let settings = parse(&text).unwrap().settings();
        assert_eq!(settings.drain_timeout, std::time::Duration::from_secs(2));
    }

    #[test]
    fn limits_default_and_are_validated_naming_the_field() {
        let settings = parse(REMOTE_ONLY).unwrap().settings();
        assert_eq!(settings.limits, LimitSettings::default());
        assert_eq!(settings.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        let with = |extra: &str| REMOTE_ONLY.replace("node: n1\n", &format!("node: n1\n{extra}"));
        let text = with("handshakeTimeoutMs: 1500\nlimits:\n  maxSockets: 1000\n  maxConnectionsPerPod: 100\n  maxHandshakes: 20\n  maxHandshakesPerPod: 5\n  maxPendingConnectsPerPod: 64\n");
        let settings = parse(&text).unwrap().settings();
        assert_eq!(
            settings.handshake_timeout,
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(
            settings.limits,
            LimitSettings {
                max_sockets: Some(1000),
                max_connections_per_pod: 100,
                max_handshakes: 20,
                max_handshakes_per_pod: 5,
                max_pending_connects_per_pod: 64,
            }
        );
        for (extra, want) in [
            (
                "limits:\n  maxPendingConnectsPerPod: 0\n",
                "limits.maxPendingConnectsPerPod must be at least 1",
            ),
            (
                "limits:\n  maxPendingConnectsPerPod: 300000\n",
                "limits.maxPendingConnectsPerPod (300000) is more than the node's original-destination map (262144)",
            ),
            (
                "limits:\n  maxConnectionsPerPod: 0\n",
                "limits.maxConnectionsPerPod must be at least 1",
            ),
            (
                "limits:\n  maxSockets: 0\n",
                "limits.maxSockets must be at least 1",
            ),
            (
                "limits:\n  maxHandshakes: 0\n",
                "limits.maxHandshakes must be at least 1",
            ),
            (
                "limits:\n  maxSockets: 10\n  maxConnectionsPerPod: 11\n",
                "limits.maxConnectionsPerPod (11) is more than limits.maxSockets (10)",
            ),
            (
                "limits:\n  maxHandshakes: 10\n  maxHandshakesPerPod: 11\n",
                "limits.maxHandshakesPerPod (11) is more than limits.maxHandshakes (10)",
            ),
            (
                "handshakeTimeoutMs: 5\n",
                "handshakeTimeoutMs must be at least 100",
            ),
            ("limits:\n  maxConection: 5\n", "maxConection"),
            (
                "inbound:\n  deliveryMark: 0\n",
                "inbound.deliveryMark must not be 0",
            ),
            ("inbound:\n  preserveSource: false\n", "preserveSource"),
        ] {
            let e = parse(&with(extra)).unwrap_err().to_string();
            assert!(e.contains(want), "{extra}: {e}");
        }
    }

    /// A list key with every entry commented out is an empty list.
    #[test]
    fn a_list_without_entries_is_empty() {
        let c = parse("node: n1\nworkloads:\n# - name: a\nservices:\npolicy:\nnamespaces:\nadmin: 127.0.0.1:15000\n").unwrap();
        assert!(c.workloads.is_empty() && c.services.is_empty());
        assert!(c.policy.is_empty() && c.namespaces.is_empty());
    }

    #[test]
    fn missing_field_is_named() {
        let e = parse("node: n1\nworkloads:\n  - name: a\n    namespace: b\n    ips: [10.0.0.1]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("serviceAccount"), "{e}");
        assert!(e.contains("test.yaml"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse("node: n1\nworkload: []\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `workload`"), "{e}");
    }

    #[test]
    fn duplicate_ip_is_refused() {
        let text = format!(
            "{REMOTE_ONLY}  - name: web-2\n    namespace: default\n    serviceAccount: web\n    node: n2\n    ips: [10.0.0.1]\n"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("address 10.0.0.1 is also used by workload default/web-1"),
            "{e}"
        );
    }

    #[test]
    fn local_workload_needs_real_netns() {
        let e = parse(
            "node: n1\nworkloads:\n  - name: a\n    namespace: b\n    serviceAccount: c\n    ips: [10.0.0.1]\n    netns: /nonexistent/ns\n    cgroup: /tmp\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("netns /nonexistent/ns: does not exist"), "{e}");
        let e = parse(
            "node: n1\nworkloads:\n  - name: a\n    namespace: b\n    serviceAccount: c\n    ips: [10.0.0.1]\n    netns: /tmp\n    cgroup: /tmp\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is not a network namespace file"), "{e}");
    }

    #[test]
    fn bad_names_and_ports() {
        let e = parse("node: n1\nworkloads:\n  - name: A_b\n    namespace: b\n    serviceAccount: c\n    node: x\n    ips: [10.0.0.1]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("name \"A_b\" is not a valid Kubernetes name"),
            "{e}"
        );
        let e = parse("node: n1\nservices:\n  - name: s\n    namespace: d\n    vip: 10.96.0.1\n    ports: [{port: 70000}]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("services[0].ports[0].port"), "{e}");
    }

    /// The error text of a config that parses but that meshd's own checks refuse.
    fn refused(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    /// A remote workload with the given extra lines, followed by the given services.
    fn with(extra: &str, services: &str) -> String {
        format!("{REMOTE_ONLY}{extra}{services}")
    }

    /// meshd's own checks, each with the exact error a user sees: port 0 as a skipped port
    /// (inbound and outbound) and as a service port (port and targetPort), a VIP that is a
    /// workload's address, a service port defined twice, a duplicate workload name.
    #[test]
    fn meshds_own_checks_have_exact_errors() {
        let at_w = "config file test.yaml: workloads[0] (default/web-1)";
        for field in ["skipInboundPorts", "skipOutboundPorts"] {
            assert_eq!(
                refused(&with(&format!("    {field}: [80, 0]\n"), "")),
                format!("{at_w}: port 0 cannot be skipped"),
            );
        }
        let at_s = "config file test.yaml: services[0] (default/web)";
        let svc = |vip: &str, ports: &str| {
            format!("services:\n  - name: web\n    namespace: default\n    vip: {vip}\n    ports: {ports}\n")
        };
        for ports in ["[{port: 0}]", "[{port: 80, targetPort: 0}]"] {
            assert_eq!(
                refused(&with("", &svc("10.96.0.1", ports))),
                format!("{at_s}: port 0 is not a valid service port"),
            );
        }
        assert_eq!(
            refused(&with("", &svc("10.0.0.1", "[{port: 80}]"))),
            format!("{at_s}: vip 10.0.0.1 is also the address of workload default/web-1"),
        );
        assert_eq!(
            refused(&with(
                "",
                &svc(
                    "10.96.0.1",
                    "[{port: 80}, {port: 443}, {port: 80, targetPort: 8080}]"
                )
            )),
            format!("{at_s}: 10.96.0.1:80 is defined twice"),
        );
        // The same VIP and port in a second service is also a port defined twice.
        let two = format!(
            "{}  - name: web2\n    namespace: default\n    vip: 10.96.0.1\n    ports: [{{port: 80}}]\n",
            svc("10.96.0.1", "[{port: 80}]")
        );
        assert_eq!(
            refused(&with("", &two)),
            "config file test.yaml: services[1] (default/web2): 10.96.0.1:80 is defined twice",
        );
        let dup = "  - name: web-1\n    namespace: default\n    serviceAccount: other\n    node: n3\n    ips: [10.0.0.2]\n";
        assert_eq!(
            refused(&with(dup, "")),
            "config file test.yaml: workloads[1] (default/web-1): duplicate workload default/web-1",
        );
        // The same name in another namespace is a different workload: accepted.
        let other_ns = dup.replace("namespace: default", "namespace: other");
        assert!(parse(&with(&other_ns, "")).is_ok());
        // And the good versions of each are accepted, so the refusals above are the checks'.
        assert!(parse(&with(
            "    skipInboundPorts: [80]\n    skipOutboundPorts: [443]\n",
            &svc("10.96.0.1", "[{port: 80, targetPort: 8080}, {port: 443}]")
        ))
        .is_ok());
    }

    /// The policy keys: every one read as a Kubernetes / Linkerd user writes it.
    #[test]
    fn policy_keys_are_read() {
        let text = format!(
            "policy: [policies, /etc/meshd/extra.yaml]
defaultInboundPolicy: cluster-authenticated
clusterNetworks: [10.0.0.0/8, \"fd00::/8\", 192.168.1.1]
namespaces:
  - name: shop
    annotations:
      config.linkerd.io/default-inbound-policy: deny
  - name: plain
{}    annotations:
      config.linkerd.io/default-inbound-policy: audit
      example.com/team: payments
    ports:
      - {{name: http, containerPort: 8080}}
      - {{containerPort: 9090, protocol: UDP}}
    probes:
      - {{path: /ready, port: http}}
      - {{path: /live, port: 8081}}
",
            REMOTE_ONLY.trim_start_matches('\n')
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.policy_paths(Path::new("/etc/meshd/config.yaml")),
            vec![
                PathBuf::from("/etc/meshd/policies"),
                PathBuf::from("/etc/meshd/extra.yaml")
            ]
        );
        assert_eq!(c.default_policy(), DefaultPolicy::ClusterAuthenticated);
        let nets: Vec<String> = c
            .cluster_networks()
            .iter()
            .map(|n| {
                serde_json::to_value(n.net)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "fd00::/8", "192.168.1.1/32"]);
        let ns = c.namespace_annotations();
        assert_eq!(ns["shop"][DEFAULT_POLICY_ANNOTATION], "deny");
        assert!(ns["plain"].is_empty());
        let w = &c.workloads[0];
        assert_eq!(w.annotations["example.com/team"], "payments");
        assert_eq!(
            w.container_ports(),
            vec![
                ContainerPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: "TCP".into()
                },
                ContainerPort {
                    name: None,
                    port: 9090,
                    protocol: "UDP".into()
                },
            ]
        );
        assert_eq!(
            w.http_probes(),
            vec![
                HttpProbe {
                    path: "/ready".into(),
                    port: ServerPort::Name("http".into())
                },
                HttpProbe {
                    path: "/live".into(),
                    port: ServerPort::Number(8081)
                },
            ]
        );
        // Absent: no policy files, Linkerd's defaults.
        let c = parse(REMOTE_ONLY).unwrap();
        assert!(c.policy_paths(Path::new("c.yaml")).is_empty());
        assert_eq!(c.default_policy(), DefaultPolicy::AllUnauthenticated);
        assert_eq!(
            c.cluster_networks(),
            crate::policy::PolicySettings::default().cluster_networks
        );
    }

    /// Every bad value of the policy keys, with the message a user sees.
    #[test]
    fn bad_policy_keys_are_refused_naming_the_field() {
        let top = |extra: &str| REMOTE_ONLY.replace("node: n1\n", &format!("node: n1\n{extra}"));
        let at_w = "config file test.yaml: workloads[0] (default/web-1)";
        let cases: Vec<(String, String)> = vec![
            (
                top("defaultInboundPolicy: allow-all\n"),
                "config file test.yaml: defaultInboundPolicy: invalid mode: \"allow-all\" (one of all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny, audit)".into(),
            ),
            (
                top("clusterNetworks: [10.0.0.0/8, 10.0.0.0/33]\n"),
                "config file test.yaml: clusterNetworks[1]: \"10.0.0.0/33\" is not a network (ADDRESS/PREFIX or an address)".into(),
            ),
            (
                top("namespaces: [{name: Shop}]\n"),
                "config file test.yaml: namespaces[0] (Shop): name \"Shop\" is not a valid namespace name".into(),
            ),
            (
                top("namespaces: [{name: shop}, {name: shop}]\n"),
                "config file test.yaml: namespaces[1] (shop): namespace shop is listed twice".into(),
            ),
            (
                top("namespaces: [{name: shop, annotations: {config.linkerd.io/default-inbound-policy: allow}}]\n"),
                "config file test.yaml: namespaces[0] (shop): annotations.\"config.linkerd.io/default-inbound-policy\": invalid mode: \"allow\" (one of all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny, audit)".into(),
            ),
            (
                with("    annotations: {config.linkerd.io/default-inbound-policy: all}\n", ""),
                format!("{at_w}: annotations.\"config.linkerd.io/default-inbound-policy\": invalid mode: \"all\" (one of all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny, audit)"),
            ),
            (
                with("    annotations: {config.linkerd.io/proxy-require-identity-inbound-ports: '8080,90x0'}\n", ""),
                format!("{at_w}: annotations.\"config.linkerd.io/proxy-require-identity-inbound-ports\": \"90x0\" is not a port or a range of ports (e.g. 8080,9000-9010)"),
            ),
            (
                with("    annotations: {config.linkerd.io/proxy-require-identity-inbound-ports: '9010-9000'}\n", ""),
                format!("{at_w}: annotations.\"config.linkerd.io/proxy-require-identity-inbound-ports\": \"9010-9000\" is not a port or a range of ports (e.g. 8080,9000-9010)"),
            ),
            (
                with("    ports: [{containerPort: 0}]\n", ""),
                format!("{at_w}: ports[0].containerPort: port 0 is not a valid container port"),
            ),
            (
                with("    ports: [{containerPort: 80, protocol: tcp}]\n", ""),
                format!("{at_w}: ports[0].protocol: \"tcp\" is not TCP, UDP or SCTP"),
            ),
            (
                with("    ports: [{name: Http, containerPort: 80}]\n", ""),
                format!("{at_w}: ports[0].name: \"Http\" is not a valid port name (at most 15 lowercase letters, digits and '-', at least one letter, no '-' at either end or next to another)"),
            ),
            (
                with("    ports: [{name: http, containerPort: 80}, {name: http, containerPort: 81}]\n", ""),
                format!("{at_w}: ports[1].name: \"http\" is also the name of ports[0]"),
            ),
            (
                with("    ports: [{name: http, containerPort: 80}]\n    probes: [{path: ready, port: http}]\n", ""),
                format!("{at_w}: probes[0].path: \"ready\" does not begin with /"),
            ),
            (
                with("    probes: [{path: /ready, port: 0}]\n", ""),
                format!("{at_w}: probes[0].port: port 0 is not a valid container port"),
            ),
            (
                with("    ports: [{name: http, containerPort: 80, protocol: UDP}]\n    probes: [{path: /ready, port: http}]\n", ""),
                format!("{at_w}: probes[0].port: no TCP port of the workload is named \"http\" (see its ports)"),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(refused(&text), want, "{text}");
        }
        // Parse errors name the field.
        for (extra, field) in [
            (
                "    ports: [{containerPort: 70000}]\n",
                "workloads[0].ports[0].containerPort",
            ),
            ("    ports: [{port: 80}]\n", "port"),
            ("    probes: [{path: /x}]\n", "port"),
        ] {
            let e = refused(&with(extra, ""));
            assert!(e.contains(field), "{extra}: {e}");
        }
        for (extra, field) in [
            ("policy: 5\n", "policy"),
            ("namespaces: [{name: a, labels: {}}]\n", "labels"),
        ] {
            let e = refused(&top(extra));
            assert!(e.contains(field), "{extra}: {e}");
        }
        // A good port name and a named probe on it, a good port list, are accepted.
        assert!(parse(&with(
            "    ports: [{name: admin-http2, containerPort: 80}]\n    probes: [{path: /ready, port: admin-http2}]\n    annotations: {config.linkerd.io/proxy-require-identity-inbound-ports: '8080, 9000-9010'}\n",
            ""
        ))
        .is_ok());
    }
}
