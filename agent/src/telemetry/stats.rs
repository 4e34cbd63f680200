//! Rolling per-workload statistics behind `meshd stat` (like `linkerd viz stat`): exact
//! counts over a sliding window of one-second buckets, the latencies of the window for
//! percentiles, and the open TCP connections.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::conn::ConnContext;

/// The longest window `meshd stat` can ask for.
pub(crate) const MAX_WINDOW_SECS: u64 = 60;
/// Latency samples kept per one-second bucket (the rest still counts in the rates).
const SAMPLES_PER_BUCKET: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    direction: &'static str,
    namespace: String,
    deployment: String,
    pod: String,
}

#[derive(Default)]
struct Bucket {
    second: u64,
    requests: u64,
    successes: u64,
    /// Requests and connections the pod's policy refused (not in `requests`).
    unauthorized: u64,
    latencies_ms: Vec<f64>,
}

#[derive(Default)]
struct Workload {
    buckets: VecDeque<Bucket>,
    requests_total: u64,
    tcp_open: i64,
}

#[derive(Default)]
pub(crate) struct Stats {
    inner: Mutex<BTreeMap<Key, WorkloadStats>>,
}

/// One workload's row, held by each of its connections so that recording a request
/// locks only this row, without looking it up.
#[derive(Clone, Default)]
pub(crate) struct WorkloadStats(Arc<Mutex<Workload>>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One row of `meshd stat`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StatRow {
    pub namespace: String,
    pub deployment: String,
    pub pod: String,
    pub direction: &'static str,
    pub meshed: bool,
    pub window_secs: u64,
    pub requests: u64,
    pub successes: u64,
    /// `None` when there were no requests in the window.
    pub success_rate: Option<f64>,
    pub rps: f64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub requests_total: u64,
    pub tcp_connections: i64,
    /// Requests (403, 404) and connections the pod's policy refused in the window, per
    /// second; they are not in `requests`.
    pub unauthorized_rps: f64,
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

pub(super) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

impl Workload {
    /// The bucket of the current second, dropping those older than the longest window.
    fn current(&mut self) -> Option<&mut Bucket> {
        let now = now_secs();
        if self.buckets.back().is_none_or(|b| b.second != now) {
            self.buckets.push_back(Bucket {
                second: now,
                ..Bucket::default()
            });
        }
        while self
            .buckets
            .front()
            .is_some_and(|b| b.second + MAX_WINDOW_SECS <= now)
        {
            self.buckets.pop_front();
        }
        self.buckets.back_mut()
    }
}

impl WorkloadStats {
    /// Counts a request or connection the pod's policy refused.
    pub(crate) fn unauthorized(&self) {
        if let Some(b) = lock(&self.0).current() {
            b.unauthorized += 1;
        }
    }

    /// Counts one finished request; `latency_ms` is `None` when it got no response.
    pub(crate) fn request(&self, success: bool, latency_ms: Option<f64>) {
        let mut w = lock(&self.0);
        w.requests_total += 1;
        if let Some(b) = w.current() {
            b.requests += 1;
            b.successes += u64::from(success);
            if let Some(latency_ms) =
                latency_ms.filter(|_| b.latencies_ms.len() < SAMPLES_PER_BUCKET)
            {
                b.latencies_ms.push(latency_ms);
            }
        }
    }

    /// A TCP connection of this workload opened (`+1`) or closed (`-1`).
    pub(crate) fn tcp(&self, delta: i64) {
        lock(&self.0).tcp_open += delta;
    }
}

impl Stats {
    /// The row of one workload (made when first asked for).
    pub(crate) fn workload(
        &self,
        direction: &'static str,
        namespace: &str,
        deployment: &str,
        pod: &str,
    ) -> WorkloadStats {
        let key = Key {
            direction,
            namespace: namespace.to_string(),
            deployment: deployment.to_string(),
            pod: pod.to_string(),
        };
        lock(&self.inner).entry(key).or_default().clone()
    }

    /// The row of a connection's workload and direction.
    pub(crate) fn connection(&self, conn: &ConnContext) -> WorkloadStats {
        let w = &conn.workload;
        self.workload(
            conn.direction.as_str(),
            &w.namespace,
            &w.deployment,
            &w.name,
        )
    }

    /// Every workload seen, over the last `window_secs` (1 to 60).
    pub(crate) fn rows(&self, window_secs: u64) -> Vec<StatRow> {
        let window = window_secs.clamp(1, MAX_WINDOW_SECS);
        let now = now_secs();
        let inner = lock(&self.inner);
        inner
            .iter()
            .map(|(k, w)| {
                let w = lock(&w.0);
                // The current second is included; the window reaches back `window` seconds.
                let recent = w.buckets.iter().filter(|b| b.second + window > now);
                let (mut requests, mut successes, mut lat) = (0, 0, Vec::new());
                let mut unauthorized = 0;
                for b in recent {
                    requests += b.requests;
                    successes += b.successes;
                    unauthorized += b.unauthorized;
                    lat.extend_from_slice(&b.latencies_ms);
                }
                lat.sort_by(f64::total_cmp);
                StatRow {
                    namespace: k.namespace.clone(),
                    deployment: k.deployment.clone(),
                    pod: k.pod.clone(),
                    direction: k.direction,
                    meshed: true,
                    window_secs: window,
                    requests,
                    successes,
                    success_rate: (requests > 0).then(|| successes as f64 / requests as f64),
                    rps: requests as f64 / window as f64,
                    latency_ms_p50: percentile(&lat, 0.50),
                    latency_ms_p95: percentile(&lat, 0.95),
                    latency_ms_p99: percentile(&lat, 0.99),
                    requests_total: w.requests_total,
                    tcp_connections: w.tcp_open,
                    unauthorized_rps: unauthorized as f64 / window as f64,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_rates_and_percentiles() {
        let s = Stats::default();
        // Two connections of one workload share its row.
        let (a, b) = (
            s.workload("inbound", "default", "web", "web-1"),
            s.workload("inbound", "default", "web", "web-1"),
        );
        for i in 0..8 {
            a.request(true, Some(f64::from(i + 1)));
        }
        b.request(false, Some(50.0));
        b.request(false, Some(100.0));
        // Failed without a response: counted, no latency.
        b.request(false, None);
        a.tcp(1);
        b.tcp(1);
        a.tcp(-1);
        s.workload("outbound", "default", "web", "web-1").tcp(1);
        for _ in 0..5 {
            a.unauthorized();
        }
        let rows = s.rows(10);
        assert_eq!(rows.len(), 2);
        let r = rows.iter().find(|r| r.direction == "inbound").unwrap();
        assert_eq!((r.requests, r.successes, r.requests_total), (11, 8, 11));
        assert_eq!(r.success_rate, Some(8.0 / 11.0));
        assert!((r.rps - 1.1).abs() < 1e-9);
        assert_eq!(r.latency_ms_p50, Some(5.0));
        assert_eq!(r.latency_ms_p99, Some(100.0));
        assert_eq!(r.tcp_connections, 1);
        assert!(
            (r.unauthorized_rps - 0.5).abs() < 1e-9,
            "not in the requests"
        );
    }
}
