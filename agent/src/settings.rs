//! The agent's own settings: which node it runs on, where its admin API listens, where it
//! pins, the trust domain and issuer files of workload identities, the connect timeout,
//! how long a shutdown drains.
//! They are read once at start-up (in standalone mode from the same file as the mesh
//! state; see [`crate::sources::file`]) and are not part of the mesh state.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// Default admin address: node-local, not reachable from pods.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:15000";
/// Default bpffs root; the agent pins under `<root>/v<PIN_VERSION>`.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/meshd";
/// Default trust domain of workload identities.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Default timeout of a plain connection to a destination.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(5000);
/// Default drain deadline on shutdown: Kubernetes' default `terminationGracePeriodSeconds`
/// (30 s) less 5 s, as ztunnel derives its own, so that the agent closes what is left,
/// detaches and removes its pins before the kubelet's SIGKILL.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// Default time a TLS and then HTTP/2 handshake on port 15008 may take, together.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default budget of one pod's proxied connections in one direction: above the
/// benchmark's 10,000 held connections between two pods.
pub const DEFAULT_MAX_CONNECTIONS_PER_POD: usize = 16_384;
/// Default budget of TLS handshakes in progress on port 15008, every pod together: each
/// holds at most an 80 KiB buffer and rustls' state, so about 45 MiB at most.
pub const DEFAULT_MAX_HANDSHAKES: usize = 512;
/// Default budget of TLS handshakes in progress on one pod's port 15008.
pub const DEFAULT_MAX_HANDSHAKES_PER_POD: usize = 128;
/// Default lifetime of workload certificates.
pub const DEFAULT_CERTIFICATE_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// This node's name.
    pub node: String,
    pub admin: SocketAddr,
    pub bpffs: PathBuf,
    pub connect_timeout: Duration,
    /// On SIGTERM, how long open connections may go on before they are closed.
    pub drain_timeout: Duration,
    /// How long the TLS and HTTP/2 handshakes of an HBONE connection may take together.
    pub handshake_timeout: Duration,
    /// The connection and handshake budgets.
    pub limits: LimitSettings,
    /// How inbound connections are delivered to the app.
    pub inbound: InboundSettings,
    /// The trust domain of workload identities (`spiffe://<trust_domain>/ns/NS/sa/SA`).
    pub trust_domain: String,
    /// Mutual TLS between workloads; without it captured connections are passed through
    /// in plaintext.
    pub identity: Option<IdentitySettings>,
}

/// The budgets of proxied connections and TLS handshakes (review M2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Sockets of every pod's connections together; `None`: derived from the open-files
    /// limit at start.
    pub max_sockets: Option<usize>,
    /// One pod's connections in one direction.
    pub max_connections_per_pod: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_pod: usize,
    /// One pod's captured connections in flight in the kernel (connect()ed, not yet
    /// accepted by the agent); above it connect() fails with `EPERM` (review M4).
    pub max_pending_connects_per_pod: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_sockets: None,
            max_connections_per_pod: DEFAULT_MAX_CONNECTIONS_PER_POD,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_pod: DEFAULT_MAX_HANDSHAKES_PER_POD,
            max_pending_connects_per_pod: meshd_common::DEFAULT_MAX_PENDING,
        }
    }
}

/// How inbound connections reach the app (see [`crate::pod_routing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundSettings {
    /// The app sees the client's own address as the source of a delivered connection (a
    /// transparent socket and policy routing in the pod's namespace); without it, the
    /// pod's own address.
    pub preserve_source_address: bool,
    /// Mark of the agent's delivery sockets, matched by the rule in each pod's namespace.
    pub delivery_mark: u32,
}

impl Default for InboundSettings {
    fn default() -> Self {
        InboundSettings {
            preserve_source_address: true,
            delivery_mark: crate::pod_routing::DEFAULT_DELIVERY_MARK,
        }
    }
}

/// Where the trust anchors and the issuer are, and how long workload certificates live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// PEM bundle of one or more trust anchors (two during an anchor rotation).
    pub trust_anchors: PathBuf,
    /// The issuer (intermediate CA) certificate, PEM, signed by a trust anchor.
    pub issuer_certificate: PathBuf,
    /// The issuer's private key, PEM (PKCS#8).
    pub issuer_key: PathBuf,
    /// Renewed at half-life.
    pub certificate_ttl: Duration,
}

impl IdentitySettings {
    pub fn issuer_files(&self) -> crate::identity::IssuerFiles {
        crate::identity::IssuerFiles {
            trust_anchors: self.trust_anchors.clone(),
            issuer_cert: self.issuer_certificate.clone(),
            issuer_key: self.issuer_key.clone(),
        }
    }
}
