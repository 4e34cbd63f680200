//! Reading an agent's Prometheus metrics (`/metrics` on its admin port) in tests: one
//! sample, the sum over label sets, and waiting until a counter has its final value.

use std::time::Duration;

use crate::{mesh::Agent, wait_until};

/// The text of the agent's `/metrics`. Panics if the admin API does not answer.
pub fn metrics(agent: &Agent) -> String {
    agent.get("/metrics").unwrap().1
}

/// Sums the samples of `name` in a metrics text whose labels include every
/// `(label, value)` of `filters` (0 when there is none).
pub fn sum_metric(text: &str, name: &str, filters: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            filters
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (10 s at most) until the sum of `name{filters}` on `agent` is `want` (counters
/// are updated as a request or connection ends, which can be just after the client has
/// seen that end); fails otherwise. Returns the metrics text it saw.
pub fn settle(agent: &Agent, name: &str, filters: &[(&str, &str)], want: f64) -> String {
    let mut text = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        text = metrics(agent);
        sum_metric(&text, name, filters) == want
    });
    assert!(ok, "{name} {filters:?} is not {want}:\n{text}");
    text
}

/// The value of the first sample of the agent's `/metrics` whose line starts with
/// `line_prefix` (a name with its full label set), 0 when there is none.
pub fn metric(agent: &Agent, line_prefix: &str) -> u64 {
    let (_, text) = agent.get("/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `hbone_rejected_total{direction, reason}` of an agent (0 when never counted).
pub fn rejected(agent: &Agent, direction: &str, reason: &str) -> u64 {
    metric(
        agent,
        &format!("hbone_rejected_total{{direction=\"{direction}\",reason=\"{reason}\"}}"),
    )
}
