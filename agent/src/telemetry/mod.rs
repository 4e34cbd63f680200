//! Where proxied requests and connections are reported: Prometheus metrics
//! ([`crate::metrics`]), the rolling per-workload statistics behind `meshd stat`
//! ([`stats`]) and the live request stream behind `meshd tap` ([`tap`]).

pub mod events;
pub mod stats;
pub mod tap;

use std::sync::Arc;

pub use events::{PeerWorkload, RequestEvent};

use crate::metrics::{Metrics, RequestSeries, ResponseClass, TrafficLabels};

pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub stats: stats::Stats,
    pub tap: tap::Tap,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            metrics: Arc::new(Metrics::default()),
            stats: stats::Stats::default(),
            tap: tap::Tap::default(),
        }
    }
}

impl Telemetry {
    /// The reporter of one connection's requests: `traffic` labels its metrics, `stats` is
    /// its workload's `meshd stat` row.
    pub fn requests(
        self: &Arc<Self>,
        traffic: TrafficLabels,
        stats: stats::WorkloadStats,
    ) -> RequestReporter {
        RequestReporter {
            series: self.metrics.requests(traffic),
            stats,
            telemetry: self.clone(),
        }
    }
}

/// Where one connection's requests are reported. The metric series and the stats row are
/// looked up once, when the connection starts, so that a request costs a few atomic
/// increments and one uncontended lock; its event for `meshd tap` is made only while
/// someone taps.
pub struct RequestReporter {
    series: RequestSeries,
    stats: stats::WorkloadStats,
    telemetry: Arc<Telemetry>,
}

/// How a request ended.
pub struct Finished {
    /// 0 when it failed without a response.
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub success: bool,
    pub latency_ms: f64,
}

impl RequestReporter {
    /// Whether a request starting now should keep what its tap event needs.
    pub fn tapped(&self) -> bool {
        self.telemetry.tap.is_watched()
    }

    /// Reports one finished request. `event` is asked for only while someone taps; it
    /// gives `None` for a request that started before the tap did.
    pub fn finish(&self, done: &Finished, event: impl FnOnce() -> Option<RequestEvent>) {
        let answered = done.status != 0;
        self.series.record(answered.then_some((
            ResponseClass {
                status_code: done.status,
                success: done.success,
                grpc_status: done.grpc_status,
            },
            done.latency_ms,
        )));
        self.stats
            .request(done.success, answered.then_some(done.latency_ms));
        if self.tapped() {
            if let Some(ev) = event() {
                self.telemetry.tap.publish(Arc::new(ev));
            }
        }
    }
}
