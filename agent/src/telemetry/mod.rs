//! Where proxied requests and connections are reported: Prometheus metrics
//! ([`crate::metrics`]), the rolling per-workload statistics behind `meshd stat`
//! ([`stats`]) and the live request stream behind `meshd tap` ([`tap`]).

pub mod events;
pub mod stats;
pub mod tap;

use std::sync::Arc;

pub use events::{PeerWorkload, RequestEvent};

use crate::metrics::Metrics;

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
    /// Reports one finished request (or one that failed without a response).
    pub fn request(&self, ev: RequestEvent) {
        self.metrics.request(&ev);
        self.stats.record(&ev);
        self.tap.publish(Arc::new(ev));
    }
}
