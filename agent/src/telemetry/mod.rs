//! Where proxied requests and connections are reported: Prometheus metrics
//! ([`metrics`], with the label sets of [`labels`]), the rolling per-workload statistics
//! behind `meshd stat` ([`stats`]), the live request stream behind `meshd tap` ([`tap`],
//! of [`events`]) and the `/connections` record ([`record`]). Each is derived here, at the
//! edge where values become text, from the connection's [`ConnContext`].
//!
//! [`ConnContext`]: crate::conn::ConnContext

pub(crate) mod authz;
pub(crate) mod authz_stats;
pub(crate) mod events;
pub(crate) mod labels;
pub(crate) mod metrics;
pub(crate) mod record;
pub(crate) mod stats;
pub(crate) mod tap;

use std::sync::Arc;

pub(crate) use crate::conn::Direction;
pub(crate) use events::RequestEvent;
pub(crate) use labels::TrafficLabels;

use metrics::{Metrics, RequestSeries, ResponseClass};

pub(crate) struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub stats: stats::Stats,
    /// `meshd authz`'s rows.
    pub authz: authz_stats::AuthzStats,
    pub tap: tap::Tap,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            metrics: Arc::new(Metrics::default()),
            stats: stats::Stats::default(),
            authz: authz_stats::AuthzStats::default(),
            tap: tap::Tap::default(),
        }
    }
}

impl Telemetry {
    /// The reporter of one connection's requests: `traffic` labels its metrics, `stats` is
    /// its workload's `meshd stat` row.
    pub(crate) fn requests(
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
pub(crate) struct RequestReporter {
    series: RequestSeries,
    stats: stats::WorkloadStats,
    telemetry: Arc<Telemetry>,
}

/// How a request ended.
pub(crate) struct Finished {
    /// 0 when it failed without a response.
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub success: bool,
    pub latency_ms: f64,
}

impl RequestReporter {
    /// Whether a request starting now should keep what its tap event needs.
    pub(crate) fn tapped(&self) -> bool {
        self.telemetry.tap.is_watched()
    }

    /// Reports one finished request. `event` is asked for only while someone taps; it
    /// gives `None` for a request that started before the tap did.
    pub(crate) fn finish(&self, done: &Finished, event: impl FnOnce() -> Option<RequestEvent>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{testing::context, ConnContext};

    fn event(conn: &Arc<ConnContext>, path: &str) -> RequestEvent {
        RequestEvent {
            conn: conn.clone(),
            at_unix_ms: 0,
            method: "GET".into(),
            authority: "web".into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
            status: 200,
            grpc_status: None,
            success: true,
            latency_ms: 1.0,
            error: None,
        }
    }

    /// Every request is counted (stats row and `request_total`); its tap event is made only
    /// while a tap is open. (That a request already in flight when the tap opens is not
    /// shown is decided by the proxy when the request starts: see `proxy/tap_tests.rs`,
    /// which runs it through the real HTTP proxy.)
    #[test]
    fn requests_are_counted_and_tapped_only_while_watched() {
        let t = Arc::new(Telemetry::default());
        let conn = Arc::new(context(Direction::Inbound));
        let stats = t.stats.connection(&conn);
        let r = t.requests(TrafficLabels::from(&*conn), stats);
        let ok = Finished {
            status: 200,
            grpc_status: None,
            success: true,
            latency_ms: 1.0,
        };
        assert!(!r.tapped());
        r.finish(&ok, || panic!("an event made with no tap open"));
        let mut tap = t.tap.subscribe();
        assert!(r.tapped());
        r.finish(&ok, || Some(event(&conn, "/one")));
        assert_eq!(
            tap.try_recv().map(|e| e.path.clone()).ok().as_deref(),
            Some("/one")
        );
        assert!(tap.try_recv().is_err());
        drop(tap);
        assert!(!r.tapped());
        r.finish(&ok, || panic!("an event made after the tap closed"));
        let row = &t.stats.rows(60)[0];
        assert_eq!((row.requests, row.successes), (3, 3));
        let text = t.metrics.encode();
        assert!(
            text.contains("request_total{direction=\"inbound\""),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("request_total{") && l.ends_with(" 3")),
            "{text}"
        );
    }
}
