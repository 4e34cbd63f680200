//! Rolling per-authorization statistics behind `meshd authz` (like `linkerd viz authz`):
//! per workload, server, route and authorization, the allowed requests (success, rate,
//! latency percentiles) and, on a row without authorization, the refused ones, over a
//! sliding window of one-second buckets.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
};

use serde::Serialize;

use super::stats::{now_secs, percentile, MAX_WINDOW_SECS};
use crate::policy::meta::Meta;

/// Latency samples kept per one-second bucket of a row.
const SAMPLES_PER_BUCKET: usize = 512;

/// One row's identity: `server` as `linkerd viz authz` writes it (`web-http`, or
/// `default:all-unauthenticated` for a default server), `authorization` as
/// `kind/name`, empty on the row that counts refusals.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub(crate) struct AuthzKey {
    pub namespace: String,
    pub deployment: String,
    pub server: String,
    pub route: String,
    pub authorization: String,
}

impl AuthzKey {
    pub(crate) fn new(
        namespace: &str,
        deployment: &str,
        server: &Meta,
        route: &Meta,
        authz: Option<&Meta>,
    ) -> AuthzKey {
        AuthzKey {
            namespace: namespace.to_string(),
            deployment: deployment.to_string(),
            server: if server.kind == "default" {
                format!("default:{}", server.name)
            } else {
                server.name.clone()
            },
            route: route.name.clone(),
            authorization: authz
                .map(|a| format!("{}/{}", a.kind, a.name))
                .unwrap_or_default(),
        }
    }
}

#[derive(Default)]
struct Bucket {
    second: u64,
    allowed: u64,
    successes: u64,
    unauthorized: u64,
    latencies_ms: Vec<f64>,
}

#[derive(Default)]
pub(crate) struct AuthzStats {
    rows: Mutex<BTreeMap<AuthzKey, VecDeque<Bucket>>>,
}

/// One row of `meshd authz`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AuthzRow {
    #[serde(flatten)]
    pub key: AuthzKey,
    pub window_secs: u64,
    pub unauthorized_rps: f64,
    /// `None` without allowed requests in the window.
    pub success_rate: Option<f64>,
    pub rps: f64,
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p95: Option<f64>,
    pub latency_ms_p99: Option<f64>,
}

impl AuthzStats {
    fn with_bucket(&self, key: AuthzKey, f: impl FnOnce(&mut Bucket)) {
        let now = now_secs();
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let buckets = rows.entry(key).or_default();
        if buckets.back().is_none_or(|b| b.second != now) {
            buckets.push_back(Bucket {
                second: now,
                ..Bucket::default()
            });
        }
        while buckets
            .front()
            .is_some_and(|b| b.second + MAX_WINDOW_SECS <= now)
        {
            buckets.pop_front();
        }
        if let Some(b) = buckets.back_mut() {
            f(b);
        }
    }

    /// An allowed request ended: `latency_ms` is `None` without a response.
    pub(crate) fn allowed(&self, key: AuthzKey, success: bool, latency_ms: Option<f64>) {
        self.with_bucket(key, |b| {
            b.allowed += 1;
            b.successes += u64::from(success);
            if let Some(l) = latency_ms.filter(|_| b.latencies_ms.len() < SAMPLES_PER_BUCKET) {
                b.latencies_ms.push(l);
            }
        });
    }

    /// A request refused for want of an authorization (`key` without authorization).
    pub(crate) fn unauthorized(&self, key: AuthzKey) {
        self.with_bucket(key, |b| b.unauthorized += 1);
    }

    /// The rows with traffic in the last `window_secs` (1 to 60), sorted by workload,
    /// server, route and authorization.
    pub(crate) fn rows(&self, window_secs: u64) -> Vec<AuthzRow> {
        let window = window_secs.clamp(1, MAX_WINDOW_SECS);
        let now = now_secs();
        let rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        rows.iter()
            .filter_map(|(key, buckets)| {
                let (mut allowed, mut successes, mut unauthorized, mut lat) = (0, 0, 0, Vec::new());
                for b in buckets.iter().filter(|b| b.second + window > now) {
                    allowed += b.allowed;
                    successes += b.successes;
                    unauthorized += b.unauthorized;
                    lat.extend_from_slice(&b.latencies_ms);
                }
                if allowed + unauthorized == 0 {
                    return None;
                }
                lat.sort_by(f64::total_cmp);
                Some(AuthzRow {
                    key: key.clone(),
                    window_secs: window,
                    unauthorized_rps: unauthorized as f64 / window as f64,
                    success_rate: (allowed > 0).then(|| successes as f64 / allowed as f64),
                    rps: allowed as f64 / window as f64,
                    latency_ms_p50: percentile(&lat, 0.50),
                    latency_ms_p95: percentile(&lat, 0.95),
                    latency_ms_p99: percentile(&lat, 0.99),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_and_refused_requests_land_on_their_rows() {
        let s = AuthzStats::default();
        let server = Meta::new("policy.linkerd.io", "server", "web-http");
        let default_server = Meta::new("", "default", "all-unauthenticated");
        let route = Meta::new("", "default", "default");
        let authz = Meta::new(
            "policy.linkerd.io",
            "authorizationpolicy",
            "web-from-frontend",
        );
        let key = |srv: &Meta, a: Option<&Meta>| AuthzKey::new("shop", "web", srv, &route, a);
        for i in 0..9 {
            s.allowed(key(&server, Some(&authz)), i != 0, Some(f64::from(i + 1)));
        }
        s.allowed(key(&server, Some(&authz)), false, None);
        for _ in 0..3 {
            s.unauthorized(key(&server, None));
        }
        s.allowed(
            key(&default_server, Some(&Meta::new("", "default", "probe"))),
            true,
            Some(1.0),
        );
        let rows = s.rows(10);
        assert_eq!(rows.len(), 3);
        // Sorted: "default:..." before "web-http"; the refusals' row (no authorization)
        // before the allowed one.
        assert_eq!(rows[0].key.server, "default:all-unauthenticated");
        assert_eq!(rows[0].key.authorization, "default/probe");
        assert_eq!(rows[1].key.authorization, "");
        assert!((rows[1].unauthorized_rps - 0.3).abs() < 1e-9);
        assert_eq!(rows[1].success_rate, None);
        let r = &rows[2];
        assert_eq!(r.key.authorization, "authorizationpolicy/web-from-frontend");
        assert_eq!(r.success_rate, Some(0.8));
        assert!((r.rps - 1.0).abs() < 1e-9);
        assert_eq!((r.latency_ms_p50, r.latency_ms_p99), (Some(5.0), Some(9.0)));
    }
}
