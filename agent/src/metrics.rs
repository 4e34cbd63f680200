//! Prometheus metrics (OpenMetrics text at the admin `/metrics`), named like Linkerd's proxy
//! where Linkerd has a metric for the same thing.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::telemetry::RequestEvent;

/// Linkerd's `response_latency_ms` buckets.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

/// Who a request or connection was for, and with whom. Every value is bounded: workload
/// names and identities from the mesh's own state, never anything a client sends.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub direction: &'static str,
    pub namespace: String,
    pub pod: String,
    pub deployment: String,
    /// `true` for mutual TLS between agents, else `no_identity`.
    pub tls: &'static str,
    pub client_id: Option<String>,
    pub server_id: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_deployment: Option<String>,
    pub dst_pod: Option<String>,
    pub dst_service: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub status_code: u16,
    pub classification: &'static str,
    pub grpc_status: Option<u32>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub direction: &'static str,
    pub namespace: String,
    pub pod: String,
    /// `invalid_request` (unparseable or ambiguous framing, e.g. request smuggling),
    /// `upstream_unavailable`.
    pub error: &'static str,
}

impl TrafficLabels {
    pub fn of_request(ev: &RequestEvent) -> TrafficLabels {
        let outbound = ev.direction == crate::proxy::Direction::Outbound;
        TrafficLabels {
            direction: ev.direction.as_str(),
            namespace: ev.namespace.clone(),
            pod: ev.pod.clone(),
            deployment: ev.deployment.clone(),
            tls: if ev.tls { "true" } else { "no_identity" },
            client_id: ev.client_id.clone().filter(|_| !outbound),
            server_id: ev.server_id.clone().filter(|_| outbound),
            dst_namespace: ev
                .peer
                .as_ref()
                .filter(|_| outbound)
                .map(|p| p.namespace.clone()),
            dst_deployment: ev
                .peer
                .as_ref()
                .filter(|_| outbound)
                .map(|p| p.deployment.clone()),
            dst_pod: ev.peer.as_ref().filter(|_| outbound).map(|p| p.pod.clone()),
            dst_service: ev.service.clone().filter(|_| outbound),
        }
    }
}

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
    pub request_total: Family<TrafficLabels, Counter>,
    pub response_total: Family<ResponseLabels, Counter>,
    pub response_latency_ms: Family<LatencyLabels, Histogram>,
    pub http_errors: Family<ErrorLabels, Counter>,
    pub tcp_open_total: Family<TrafficLabels, Counter>,
    pub tcp_close_total: Family<TrafficLabels, Counter>,
    pub tcp_open_connections: Family<TrafficLabels, Gauge>,
    pub tcp_read_bytes_total: Family<TrafficLabels, Counter>,
    pub tcp_write_bytes_total: Family<TrafficLabels, Counter>,
    pub hbone_rejected: Family<RejectLabels, Counter>,
    pub cert_expiration: Family<IdentityLabels, Gauge>,
    pub cert_refresh: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let request_total = Family::<TrafficLabels, Counter>::default();
        registry.register("request", "HTTP requests", request_total.clone());
        let response_total = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "response",
            "HTTP responses, classified",
            response_total.clone(),
        );
        let response_latency_ms = Family::<LatencyLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS_MS)) as fn() -> Histogram,
        );
        registry.register(
            "response_latency_ms",
            "Time from a request's headers to its response's headers, in milliseconds",
            response_latency_ms.clone(),
        );
        let http_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "http_errors",
            "HTTP requests refused or failed by the proxy",
            http_errors.clone(),
        );
        let tcp_open_total = Family::<TrafficLabels, Counter>::default();
        registry.register("tcp_open", "TCP connections opened", tcp_open_total.clone());
        let tcp_close_total = Family::<TrafficLabels, Counter>::default();
        registry.register(
            "tcp_close",
            "TCP connections closed",
            tcp_close_total.clone(),
        );
        let tcp_open_connections = Family::<TrafficLabels, Gauge>::default();
        registry.register(
            "tcp_open_connections",
            "TCP connections open now",
            tcp_open_connections.clone(),
        );
        let tcp_read_bytes_total = Family::<TrafficLabels, Counter>::default();
        registry.register(
            "tcp_read_bytes",
            "Bytes read from clients",
            tcp_read_bytes_total.clone(),
        );
        let tcp_write_bytes_total = Family::<TrafficLabels, Counter>::default();
        registry.register(
            "tcp_write_bytes",
            "Bytes written to clients",
            tcp_write_bytes_total.clone(),
        );
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
            request_total,
            response_total,
            response_latency_ms,
            http_errors,
            tcp_open_total,
            tcp_close_total,
            tcp_open_connections,
            tcp_read_bytes_total,
            tcp_write_bytes_total,
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

    /// Counts one finished request.
    pub fn request(&self, ev: &RequestEvent) {
        let traffic = TrafficLabels::of_request(ev);
        self.request_total.get_or_create(&traffic).inc();
        if ev.status != 0 {
            self.response_total
                .get_or_create(&ResponseLabels {
                    traffic: traffic.clone(),
                    status_code: ev.status,
                    classification: if ev.success { "success" } else { "failure" },
                    grpc_status: ev.grpc_status,
                })
                .inc();
            self.response_latency_ms
                .get_or_create(&LatencyLabels {
                    traffic,
                    status_code: ev.status,
                })
                .observe(ev.latency_ms);
        }
    }

    pub fn tcp_open(&self, labels: &TrafficLabels) {
        self.tcp_open_total.get_or_create(labels).inc();
        self.tcp_open_connections.get_or_create(labels).inc();
    }

    pub fn tcp_close(&self, labels: &TrafficLabels, read: u64, written: u64) {
        self.tcp_close_total.get_or_create(labels).inc();
        self.tcp_open_connections.get_or_create(labels).dec();
        self.tcp_read_bytes_total.get_or_create(labels).inc_by(read);
        self.tcp_write_bytes_total
            .get_or_create(labels)
            .inc_by(written);
    }

    pub fn http_error(
        &self,
        direction: &'static str,
        namespace: &str,
        pod: &str,
        error: &'static str,
    ) {
        self.http_errors
            .get_or_create(&ErrorLabels {
                direction,
                namespace: namespace.to_string(),
                pod: pod.to_string(),
                error,
            })
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
