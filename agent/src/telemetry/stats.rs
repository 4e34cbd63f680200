//! Rolling per-workload request statistics for `meshd stat`.
//! (Placeholder: the aggregation lands next.)

use super::RequestEvent;

#[derive(Default)]
pub struct Stats {}

impl Stats {
    pub fn record(&self, _ev: &RequestEvent) {}
}
