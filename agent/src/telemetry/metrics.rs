//! Prometheus metrics (OpenMetrics text at the admin `/metrics`), named like Linkerd's proxy
//! where Linkerd has a metric for the same thing.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use super::labels::{ErrorLabels, TrafficLabels};
use crate::conn::ConnContext;

/// Linkerd's `response_latency_ms` buckets.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResponseLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub status_code: u16,
    pub classification: &'static str,
    pub grpc_status: Option<u32>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LatencyLabels {
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
    pub status_code: u16,
}

/// Why a mutual-TLS (HBONE) connection or tunnel was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectLabels {
    /// `inbound` (this agent was the server) or `outbound` (it was the client).
    pub direction: &'static str,
    /// A fixed set: `unknown_ca`, `expired`, `not_yet_valid`, `no_client_cert`, `not_tls`,
    /// `server_identity_mismatch`, `connect_other_address`, `bad_request`, `handshake`.
    pub reason: &'static str,
}

/// A connection (or HBONE tunnel) refused because a budget was full.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusedLabels {
    pub direction: &'static str,
    pub namespace: String,
    pub pod: String,
    /// `pod_connections`, `node_sockets`, `pod_handshakes`, `node_handshakes`.
    pub reason: &'static str,
}

/// A pod's connect() refused by its capture in the kernel (fail closed, review M4).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CaptureRefusedLabels {
    pub namespace: String,
    pub pod: String,
    /// `pending_quota` (the pod had `limits.maxPendingConnectsPerPod` connections in
    /// flight), `orig_dst_full` (the node's original-destination map was full).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IdentityLabels {
    pub identity: String,
}

/// Why a local workload could not be enrolled.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EnrollFailureLabels {
    /// A fixed set: `listen` (a pod's agent port was taken: its traffic is refused),
    /// `netns`, `identity`, `capture`, `not_local`.
    pub reason: &'static str,
}

/// One trust anchor, by its subject (from the agent's own anchor bundle).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AnchorLabels {
    pub subject: String,
}

pub(crate) struct Metrics {
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
    pub connections_refused: Family<RefusedLabels, Counter>,
    /// Read from the kernel's per-pod counters at each scrape.
    pub capture_refused: Family<CaptureRefusedLabels, Counter>,
    pub orig_dst_swept: Counter,
    pub cert_expiration: Family<IdentityLabels, Gauge>,
    pub cert_refresh: Gauge,
    /// Seconds until the issuer certificate expires (negative once expired).
    pub issuer_expiry: Gauge,
    /// Seconds until each trust anchor expires.
    pub anchor_expiry: Family<AnchorLabels, Gauge>,
    /// Failed enrollment attempts, by reason.
    pub enroll_failures: Family<EnrollFailureLabels, Counter>,
    /// Local workloads of the applied state that are not enrolled now.
    pub workloads_not_enrolled: Gauge,
    /// Linkerd's authorization counters.
    pub authz: super::authz::AuthzMetrics,
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
        let connections_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections and HBONE tunnels refused because a connection or handshake budget was full",
            connections_refused.clone(),
        );
        let capture_refused = Family::<CaptureRefusedLabels, Counter>::default();
        registry.register(
            "capture_refused",
            "A pod's connect() calls refused by its capture (EPERM) because the original destination could not be recorded",
            capture_refused.clone(),
        );
        let orig_dst_swept = Counter::default();
        registry.register(
            "capture_orig_dst_swept",
            "Original destinations of captured connections the agent never accepted, removed after a minute",
            orig_dst_swept.clone(),
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
        let issuer_expiry = Gauge::default();
        registry.register(
            "identity_issuer_expiry_seconds",
            "Seconds until the issuer certificate expires (negative once it has); workload certificates cannot outlive it",
            issuer_expiry.clone(),
        );
        let anchor_expiry = Family::<AnchorLabels, Gauge>::default();
        registry.register(
            "identity_trust_anchor_expiry_seconds",
            "Seconds until each trust anchor expires",
            anchor_expiry.clone(),
        );
        let enroll_failures = Family::<EnrollFailureLabels, Counter>::default();
        registry.register(
            "workload_enroll_failures",
            "Failed attempts to enroll a local workload, by reason",
            enroll_failures.clone(),
        );
        let workloads_not_enrolled = Gauge::default();
        registry.register(
            "workloads_not_enrolled",
            "Local workloads of the applied configuration that are not enrolled (see /config_dump)",
            workloads_not_enrolled.clone(),
        );
        let authz = super::authz::AuthzMetrics::default();
        authz.register(&mut registry);
        Metrics {
            registry,
            authz,
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
            connections_refused,
            capture_refused,
            orig_dst_swept,
            cert_expiration,
            cert_refresh,
            issuer_expiry,
            anchor_expiry,
            enroll_failures,
            workloads_not_enrolled,
        }
    }
}

impl Metrics {
    pub(crate) fn enroll_failure(&self, reason: &'static str) {
        self.enroll_failures
            .get_or_create(&EnrollFailureLabels { reason })
            .inc();
    }

    pub(crate) fn reject(&self, direction: &'static str, reason: &'static str) {
        self.hbone_rejected
            .get_or_create(&RejectLabels { direction, reason })
            .inc();
    }

    /// A connection refused for a full budget.
    pub(crate) fn refused(&self, labels: &RefusedLabels) {
        self.connections_refused.get_or_create(labels).inc();
    }

    /// The request series of one connection's traffic labels, looked up once.
    pub(crate) fn requests(self: &Arc<Self>, traffic: TrafficLabels) -> RequestSeries {
        RequestSeries {
            request_total: self.request_total.get_or_create(&traffic).clone(),
            responses: Mutex::new(Vec::new()),
            metrics: self.clone(),
            traffic,
        }
    }

    pub(crate) fn tcp_open(&self, labels: &TrafficLabels) {
        self.tcp_open_total.get_or_create(labels).inc();
        self.tcp_open_connections.get_or_create(labels).inc();
    }

    pub(crate) fn tcp_close(&self, labels: &TrafficLabels, read: u64, written: u64) {
        self.tcp_close_total.get_or_create(labels).inc();
        self.tcp_open_connections.get_or_create(labels).dec();
        self.tcp_read_bytes_total.get_or_create(labels).inc_by(read);
        self.tcp_write_bytes_total
            .get_or_create(labels)
            .inc_by(written);
    }

    /// An HTTP request of connection `conn` refused or failed by the proxy.
    pub(crate) fn http_error(&self, conn: &ConnContext, error: &'static str) {
        self.http_errors
            .get_or_create(&ErrorLabels::new(conn, error))
            .inc();
    }

    /// OpenMetrics text.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// The request metrics of one connection. Its traffic labels do not change while it is
/// open, so the series are looked up in the families once (and once per new response
/// class) instead of hashing every label on every request. The handles share their values
/// with the families, which never drop a series.
pub(crate) struct RequestSeries {
    traffic: TrafficLabels,
    request_total: Counter,
    /// By (status, success, gRPC status): `response_total` and `response_latency_ms`.
    responses: Mutex<Vec<(ResponseClass, Counter, Histogram)>>,
    metrics: Arc<Metrics>,
}

/// What a response is counted by, besides its connection's traffic labels.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseClass {
    pub status_code: u16,
    pub success: bool,
    pub grpc_status: Option<u32>,
}

/// Response classes remembered per connection; a connection that sees more still counts
/// every response, looking the rest up in the families.
const CLASSES_PER_CONNECTION: usize = 8;

impl RequestSeries {
    /// Counts one finished request: with `None`, one that failed without a response.
    pub(crate) fn record(&self, response: Option<(ResponseClass, f64)>) {
        self.request_total.inc();
        let Some((class, latency_ms)) = response else {
            return;
        };
        let mut cached = self.responses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, total, latency)) = cached.iter().find(|(c, _, _)| *c == class) {
            total.inc();
            latency.observe(latency_ms);
            return;
        }
        let total = self
            .metrics
            .response_total
            .get_or_create(&ResponseLabels {
                traffic: self.traffic.clone(),
                status_code: class.status_code,
                classification: if class.success { "success" } else { "failure" },
                grpc_status: class.grpc_status,
            })
            .clone();
        let latency = self
            .metrics
            .response_latency_ms
            .get_or_create(&LatencyLabels {
                traffic: self.traffic.clone(),
                status_code: class.status_code,
            })
            .clone();
        total.inc();
        latency.observe(latency_ms);
        if cached.len() < CLASSES_PER_CONNECTION {
            cached.push((class, total, latency));
        }
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

    fn traffic(pod: &str) -> TrafficLabels {
        TrafficLabels {
            direction: "inbound",
            namespace: "default".into(),
            pod: pod.into(),
            deployment: "web".into(),
            tls: "true",
            client_id: Some("spiffe://cluster.local/ns/default/sa/curl".into()),
            server_id: None,
            dst_namespace: None,
            dst_deployment: None,
            dst_pod: None,
            dst_service: None,
        }
    }

    fn line_value(text: &str, starts: &str, contains: &[&str]) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(starts) && contains.iter().all(|c| l.contains(c)))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn connection_series_count_into_the_families() {
        let m = Arc::new(Metrics::default());
        // Two connections of one workload, and one of another.
        let (a, b, c) = (
            m.requests(traffic("web-1")),
            m.requests(traffic("web-1")),
            m.requests(traffic("web-2")),
        );
        let class = |status_code, grpc_status: Option<u32>| ResponseClass {
            status_code,
            success: status_code < 500 && grpc_status.is_none_or(|g| g == 0),
            grpc_status,
        };
        for _ in 0..3 {
            a.record(Some((class(200, None), 4.0)));
        }
        b.record(Some((class(200, None), 40.0)));
        b.record(Some((class(503, None), 1.0)));
        b.record(None);
        // More response classes than a connection remembers: each is still counted.
        for g in 0..12 {
            c.record(Some((class(200, Some(g)), 1.0)));
            c.record(Some((class(200, Some(g)), 1.0)));
        }
        let text = m.encode();
        let web1 = "pod=\"web-1\"";
        assert_eq!(
            line_value(&text, "request_total{", &[web1]),
            Some(6.0),
            "{text}"
        );
        assert_eq!(
            line_value(&text, "request_total{", &["pod=\"web-2\""]),
            Some(24.0)
        );
        let ok = ["status_code=\"200\"", "classification=\"success\"", web1];
        assert_eq!(line_value(&text, "response_total{", &ok), Some(4.0));
        let failed = ["status_code=\"503\"", "classification=\"failure\"", web1];
        assert_eq!(line_value(&text, "response_total{", &failed), Some(1.0));
        for g in 0..12 {
            let grpc = format!("grpc_status=\"{g}\"");
            let want = [grpc.as_str(), "pod=\"web-2\""];
            assert_eq!(
                line_value(&text, "response_total{", &want),
                Some(2.0),
                "grpc {g}"
            );
        }
        let latency = ["status_code=\"200\"", web1];
        assert_eq!(
            line_value(&text, "response_latency_ms_count{", &latency),
            Some(4.0)
        );
        assert_eq!(
            line_value(&text, "response_latency_ms_sum{", &latency),
            Some(52.0)
        );
        let le5 = ["status_code=\"200\"", web1, "le=\"5.0\""];
        assert_eq!(
            line_value(&text, "response_latency_ms_bucket{", &le5),
            Some(3.0)
        );
    }
}
