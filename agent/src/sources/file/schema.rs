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
    #[serde(default)]
    pub workloads: Vec<WorkloadConfig>,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
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
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    /// Network namespace file, e.g. `/run/netns/web-1` (required on this node).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// cgroup v2 directory holding the workload's processes (required on this node).
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Inbound ports not steered to the agent (Linkerd's skip-inbound-ports).
    #[serde(default)]
    pub skip_inbound_ports: BTreeSet<u16>,
    /// Outbound destination ports that bypass the agent (Linkerd's skip-outbound-ports).
    #[serde(default)]
    pub skip_outbound_ports: BTreeSet<u16>,
    /// Ports whose traffic is never parsed as HTTP (server-speaks-first protocols; Linkerd's
    /// opaque-ports). Defaults to Linkerd's list.
    #[serde(default)]
    pub opaque_ports: Option<BTreeSet<u16>>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ServiceConfig {
    pub name: String,
    pub namespace: String,
    pub vip: IpAddr,
    pub ports: Vec<ServicePortConfig>,
    /// Workloads whose labels include all of these are endpoints.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Additional endpoint addresses (for example pods that are not in this file).
    #[serde(default)]
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
}

impl FileConfig {
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
        let de = serde_yaml::Deserializer::from_str(text);
        let config: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let inner = inner.to_string();
            // serde_yaml names the field itself for some errors; do not say it twice.
            let message = if field.is_empty() || field == "." || inner.starts_with(&field) {
                inner
            } else {
                format!("at {field}: {inner}")
            };
            ConfigError::Parse {
                path: path.to_owned(),
                message,
            }
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
}
