//! Prometheus metrics (OpenMetrics text at the admin `/metrics`), named like Linkerd's proxy
//! where Linkerd has a metric for the same thing.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Why a mutual-TLS (HBONE) connection or tunnel was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// `inbound` (this agent was the server) or `outbound` (it was the client).
    pub direction: &'static str,
    /// A fixed set: `unknown_ca`, `expired`, `not_yet_valid`, `no_client_cert`, `not_tls`,
    /// `server_identity_mismatch`, `connect_other_address`, `bad_request`, `handshake`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub identity: String,
}

pub struct Metrics {
    registry: Registry,
    pub hbone_rejected: Family<RejectLabels, Counter>,
    pub cert_expiration: Family<IdentityLabels, Gauge>,
    pub cert_refresh: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let hbone_rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "hbone_rejected",
            "Mutual-TLS connections and HBONE tunnels refused, by reason",
            hbone_rejected.clone(),
        );
        let cert_expiration = Family::<IdentityLabels, Gauge>::default();
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "Expiry of each workload certificate this agent holds (Unix seconds)",
            cert_expiration.clone(),
        );
        let cert_refresh = Gauge::default();
        registry.register(
            "identity_cert_refresh_count",
            "Workload certificates issued or renewed",
            cert_refresh.clone(),
        );
        Metrics {
            registry,
            hbone_rejected,
            cert_expiration,
            cert_refresh,
        }
    }
}

impl Metrics {
    pub fn reject(&self, direction: &'static str, reason: &'static str) {
        self.hbone_rejected
            .get_or_create(&RejectLabels { direction, reason })
            .inc();
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_linkerd_names() {
        let m = Metrics::default();
        m.reject("inbound", "unknown_ca");
        m.reject("inbound", "unknown_ca");
        m.cert_expiration
            .get_or_create(&IdentityLabels {
                identity: "spiffe://cluster.local/ns/default/sa/web".into(),
            })
            .set(1_800_000_000);
        let text = m.encode();
        assert!(
            text.contains("hbone_rejected_total{direction=\"inbound\",reason=\"unknown_ca\"} 2"),
            "{text}"
        );
        assert!(text.contains("identity_cert_expiration_timestamp_seconds{identity=\"spiffe://cluster.local/ns/default/sa/web\"} 1800000000"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
