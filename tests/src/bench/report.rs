//! The benchmark's results: figures per mode, targets, JSON, the table and comparisons.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use serde_json::{json, Map, Value};

/// Version tag of the JSON layout.
pub const SCHEMA: &str = "meshd-bench/1";

/// The modes, in the order they run and print.
pub const MODES: &[&str] = &["direct", "relay", "passthrough", "mtls", "mtls-http"];

/// Modes that run no agent (so no agent memory or CPU figures).
pub const WITHOUT_AGENT: &[&str] = &["direct", "relay"];

/// One measurement: its JSON key, what it is, its unit, and which way is better.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    /// Measured only where there is an agent (not in `direct`).
    pub agent_only: bool,
    /// Shown as time added over `direct` as well as a ratio.
    pub latency: bool,
}

const fn m(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
    agent_only: bool,
    latency: bool,
) -> Metric {
    Metric {
        key,
        label,
        unit,
        higher_is_better,
        agent_only,
        latency,
    }
}

/// Every measurement, in print order. `{pods}`, `{conns}`, `{conns_max}` and `{requests}` in
/// labels are replaced with the run's options.
pub const METRICS: &[Metric] = &[
    m(
        "throughput_1_gbps",
        "bulk TCP, 1 stream",
        "Gbit/s",
        true,
        false,
        false,
    ),
    m(
        "throughput_8_gbps",
        "bulk TCP, 8 streams",
        "Gbit/s",
        true,
        false,
        false,
    ),
    m(
        "latency_p50_us",
        "1 KiB req/resp @{rate}/s p50",
        "us",
        false,
        false,
        true,
    ),
    m(
        "latency_p99_us",
        "1 KiB req/resp @{rate}/s p99",
        "us",
        false,
        false,
        true,
    ),
    m(
        "latency_p999_us",
        "1 KiB req/resp @{rate}/s p99.9",
        "us",
        false,
        false,
        true,
    ),
    m(
        "latency_busy_p50_us",
        "  the same, CPUs kept out of idle, p50",
        "us",
        false,
        false,
        true,
    ),
    m(
        "latency_busy_p99_us",
        "  the same, CPUs kept out of idle, p99",
        "us",
        false,
        false,
        true,
    ),
    m(
        "latency_busy_p999_us",
        "  the same, CPUs kept out of idle, p99.9",
        "us",
        false,
        false,
        true,
    ),
    m("cps", "new connections", "conn/s", true, false, false),
    m(
        "http1_rps",
        "HTTP/1.1 requests (h2load --h1)",
        "req/s",
        true,
        false,
        false,
    ),
    m(
        "http2_rps",
        "HTTP/2 requests (h2load, h2c)",
        "req/s",
        true,
        false,
        false,
    ),
    m(
        "agent_rss_idle_mb",
        "agent RSS, idle",
        "MiB",
        false,
        true,
        false,
    ),
    m(
        "agent_rss_pods_mb",
        "agent RSS, {pods} pods",
        "MiB",
        false,
        true,
        false,
    ),
    m(
        "agent_rss_conns_mb",
        "agent RSS, {pods} pods + {conns} conns",
        "MiB",
        false,
        true,
        false,
    ),
    m(
        "agent_rss_conns_max_mb",
        "agent RSS, {pods} pods + {conns_max} conns",
        "MiB",
        false,
        true,
        false,
    ),
    m(
        "conns_max_opened",
        "  of {conns_max} conns, opened",
        "conns",
        true,
        true,
        false,
    ),
    m(
        "agent_cpu_s_per_1k_req",
        "agent CPU per 1k HTTP/1.1 req",
        "CPU-s",
        false,
        true,
        false,
    ),
];

/// The metric with this key.
pub fn metric(key: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.key == key)
}

/// Where the run happened.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub cores: u64,
    pub kernel: String,
    pub agent_binary: String,
    /// `release`, `debug` or `unknown` (from the binary's path).
    pub agent_build: String,
    pub testapp_binary: String,
}

/// The settings a run used (sizes and durations), as recorded in the report.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    pub quick: bool,
    pub duration_secs: u64,
    pub rate: u64,
    pub cps_concurrency: u64,
    pub http_concurrency: u64,
    pub pods: u64,
    pub conns: u64,
    pub conns_max: u64,
    pub cpu_requests: u64,
    /// Worker threads of each agent (`meshd run --workers`); 0: the agent's default.
    pub agent_workers: u64,
    /// The TCP congestion control of the pods' sockets (`bbr`, `cubic`, ...); empty in
    /// reports written before it was recorded.
    pub congestion_control: String,
}

/// One mode's results.
#[derive(Clone, Debug, PartialEq)]
pub struct ModeReport {
    pub mode: String,
    pub description: String,
    /// `Some(reason)` when the mode could not be set up with this agent.
    pub unavailable: Option<String>,
    /// Metric key -> value (see [`METRICS`]). A measurement that failed is absent and
    /// explained in `notes`.
    pub figures: BTreeMap<String, f64>,
    /// What happened that a reader should know (errors, limits hit).
    pub notes: Vec<String>,
    /// Raw details (tool outputs, per-agent values, limits).
    pub details: Map<String, Value>,
}

impl ModeReport {
    pub fn new(mode: &str, description: &str) -> ModeReport {
        ModeReport {
            mode: mode.to_string(),
            description: description.to_string(),
            unavailable: None,
            figures: BTreeMap::new(),
            notes: Vec::new(),
            details: Map::new(),
        }
    }

    pub fn available(&self) -> bool {
        self.unavailable.is_none()
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.figures.get(key).copied()
    }

    /// The metrics this mode should have measured when available.
    pub fn expected_metrics(&self) -> Vec<&'static Metric> {
        METRICS
            .iter()
            .filter(|m| !(m.agent_only && WITHOUT_AGENT.contains(&self.mode.as_str())))
            .collect()
    }
}

/// A target from the issue, checked against this run.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub name: String,
    /// The measured value (a ratio, microseconds, MiB or CPU-seconds), if measured.
    pub value: Option<f64>,
    pub limit: f64,
    /// `true`: the value must be >= limit; `false`: <= limit.
    pub at_least: bool,
    /// PASS / MISS, or `n/a: why`.
    pub result: String,
}

/// Everything a run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub unix_time: u64,
    pub machine: Machine,
    pub settings: RunSettings,
    pub modes: Vec<ModeReport>,
    pub targets: Vec<Target>,
}

fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        (x * 10.0).round() / 10.0
    } else {
        (x * 10_000.0).round() / 10_000.0
    }
}

impl Report {
    pub fn mode(&self, name: &str) -> Option<&ModeReport> {
        self.modes.iter().find(|m| m.mode == name)
    }

    /// A figure of an available mode.
    pub fn figure(&self, mode: &str, key: &str) -> Option<f64> {
        self.mode(mode)
            .filter(|m| m.available())
            .and_then(|m| m.get(key))
    }

    /// `mode`'s figure divided by `direct`'s.
    pub fn ratio(&self, mode: &str, key: &str) -> Option<f64> {
        let d = self.figure("direct", key)?;
        let v = self.figure(mode, key)?;
        (d != 0.0).then(|| v / d)
    }

    /// Replaces `{pods}` etc. in a metric label with this run's settings.
    pub fn label(&self, m: &Metric) -> String {
        let s = &self.settings;
        m.label
            .replace("{pods}", &s.pods.to_string())
            .replace("{conns_max}", &s.conns_max.to_string())
            .replace("{conns}", &s.conns.to_string())
            .replace("{rate}", &s.rate.to_string())
            .replace("{requests}", &s.cpu_requests.to_string())
    }

    /// Computes [`Report::targets`] from the figures.
    pub fn compute_targets(&mut self) {
        let mut t = Vec::new();
        let avail = |r: &Report, mode: &str| -> Result<(), String> {
            match r.mode(mode) {
                None => Err(format!("n/a: {mode} was not run")),
                Some(m) => match &m.unavailable {
                    Some(_) => Err(format!("n/a: {mode} unavailable")),
                    None => Ok(()),
                },
            }
        };
        let mut add = |name: String, value: Result<Option<f64>, String>, limit, at_least| {
            let (value, result) = match value {
                Err(why) => (None, why),
                Ok(None) => (None, "n/a: not measured".to_string()),
                Ok(Some(v)) => {
                    let pass = if at_least { v >= limit } else { v <= limit };
                    (
                        Some(round(v)),
                        if pass { "PASS" } else { "MISS" }.to_string(),
                    )
                }
            };
            t.push(Target {
                name,
                value,
                limit,
                at_least,
                result,
            });
        };
        for (mode, limit) in [("passthrough", 0.7), ("mtls", 0.35)] {
            for (key, what) in [
                ("throughput_1_gbps", "1 stream"),
                ("throughput_8_gbps", "8 streams"),
            ] {
                add(
                    format!("{mode} throughput ({what}) >= {limit} x direct"),
                    avail(self, mode).map(|_| self.ratio(mode, key)),
                    limit,
                    true,
                );
            }
        }
        for (key, what, limit, cpus) in [
            ("latency_p50_us", "p50", 100.0, ""),
            ("latency_p99_us", "p99", 300.0, ""),
            (
                "latency_busy_p50_us",
                "p50",
                100.0,
                ", CPUs kept out of idle (against direct's lower p50)",
            ),
            (
                "latency_busy_p99_us",
                "p99",
                300.0,
                ", CPUs kept out of idle (against direct's lower p99)",
            ),
        ] {
            // With the CPUs kept busy, the spinning threads may slow `direct` itself: the
            // smaller of direct's two figures is the reference, so that never flatters mtls.
            let reference = |r: &Report| {
                let plain = r.figure("direct", &key.replace("latency_busy_", "latency_"))?;
                Some(r.figure("direct", key)?.min(plain))
            };
            let added =
                avail(self, "mtls").map(|_| Some(self.figure("mtls", key)? - reference(self)?));
            add(
                format!(
                    "mtls {what} latency added over direct <= {limit} us at {} rps{cpus}",
                    self.settings.rate
                ),
                added,
                limit,
                false,
            );
        }
        for mode in ["passthrough", "mtls"] {
            add(
                format!("{mode} agent memory idle <= 15 MiB"),
                avail(self, mode).map(|_| self.figure(mode, "agent_rss_idle_mb")),
                15.0,
                false,
            );
            add(
                format!(
                    "{mode} agent memory with {} pods and {} conns <= 40 MiB",
                    self.settings.pods, self.settings.conns
                ),
                avail(self, mode).map(|_| self.figure(mode, "agent_rss_conns_mb")),
                40.0,
                false,
            );
        }
        add(
            "mtls-http agent CPU <= 0.05 CPU-s per 1,000 HTTP requests".to_string(),
            avail(self, "mtls-http").map(|_| self.figure("mtls-http", "agent_cpu_s_per_1k_req")),
            0.05,
            false,
        );
        self.targets = t;
    }

    pub fn to_json(&self) -> Value {
        let m = &self.machine;
        let s = &self.settings;
        json!({
            "schema": SCHEMA,
            "unix_time": self.unix_time,
            "machine": {
                "cores": m.cores,
                "kernel": m.kernel,
                "agent_binary": m.agent_binary,
                "agent_build": m.agent_build,
                "testapp_binary": m.testapp_binary,
            },
            "settings": {
                "quick": s.quick,
                "duration_secs": s.duration_secs,
                "rate": s.rate,
                "cps_concurrency": s.cps_concurrency,
                "http_concurrency": s.http_concurrency,
                "pods": s.pods,
                "conns": s.conns,
                "conns_max": s.conns_max,
                "cpu_requests": s.cpu_requests,
                "agent_workers": s.agent_workers,
                "congestion_control": s.congestion_control,
            },
            "modes": self.modes.iter().map(|m| json!({
                "mode": m.mode,
                "description": m.description,
                "available": m.available(),
                "unavailable": m.unavailable,
                "figures": m.figures,
                "notes": m.notes,
                "details": m.details,
            })).collect::<Vec<_>>(),
            "targets": self.targets.iter().map(|t| json!({
                "target": t.name,
                "value": t.value,
                "limit": t.limit,
                "at_least": t.at_least,
                "result": t.result,
            })).collect::<Vec<_>>(),
        })
    }

    pub fn from_json(v: &Value) -> anyhow::Result<Report> {
        if v["schema"] != SCHEMA {
            anyhow::bail!("not a {SCHEMA} report (schema {})", v["schema"]);
        }
        let str_ = |v: &Value, k: &str| -> anyhow::Result<String> {
            v[k].as_str()
                .map(String::from)
                .with_context(|| format!("{k} is not a string"))
        };
        let u64_ = |v: &Value, k: &str| -> anyhow::Result<u64> {
            v[k].as_u64()
                .with_context(|| format!("{k} is not a number"))
        };
        let m = &v["machine"];
        let s = &v["settings"];
        let mut modes = Vec::new();
        for mv in v["modes"].as_array().context("modes is not an array")? {
            let mut figures = BTreeMap::new();
            for (k, x) in mv["figures"].as_object().context("figures")? {
                figures.insert(k.clone(), x.as_f64().context("figure")?);
            }
            modes.push(ModeReport {
                mode: str_(mv, "mode")?,
                description: str_(mv, "description")?,
                unavailable: mv["unavailable"].as_str().map(String::from),
                figures,
                notes: mv["notes"]
                    .as_array()
                    .context("notes")?
                    .iter()
                    .map(|n| n.as_str().unwrap_or_default().to_string())
                    .collect(),
                details: mv["details"].as_object().cloned().unwrap_or_default(),
            });
        }
        let mut targets = Vec::new();
        for tv in v["targets"].as_array().context("targets is not an array")? {
            targets.push(Target {
                name: str_(tv, "target")?,
                value: tv["value"].as_f64(),
                limit: tv["limit"].as_f64().context("limit")?,
                at_least: tv["at_least"].as_bool().context("at_least")?,
                result: str_(tv, "result")?,
            });
        }
        Ok(Report {
            unix_time: u64_(v, "unix_time")?,
            machine: Machine {
                cores: u64_(m, "cores")?,
                kernel: str_(m, "kernel")?,
                agent_binary: str_(m, "agent_binary")?,
                agent_build: str_(m, "agent_build")?,
                testapp_binary: str_(m, "testapp_binary")?,
            },
            settings: RunSettings {
                quick: s["quick"].as_bool().context("quick")?,
                duration_secs: u64_(s, "duration_secs")?,
                rate: u64_(s, "rate")?,
                cps_concurrency: u64_(s, "cps_concurrency")?,
                http_concurrency: u64_(s, "http_concurrency")?,
                pods: u64_(s, "pods")?,
                conns: u64_(s, "conns")?,
                conns_max: u64_(s, "conns_max")?,
                cpu_requests: u64_(s, "cpu_requests")?,
                // Absent in reports written before the setting existed.
                agent_workers: s["agent_workers"].as_u64().unwrap_or(0),
                congestion_control: s["congestion_control"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            },
            modes,
            targets,
        })
    }

    /// Reads a report written by `cargo xtask bench`.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Report> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        Report::from_json(&v).with_context(|| format!("reading {}", path.display()))
    }

    /// One cell of the table: the figure of `met` in `mode`, with its ratio to `direct` (and,
    /// for latencies, the time added), or why there is none.
    fn cell(&self, mode: &ModeReport, met: &Metric) -> String {
        if mode.unavailable.is_some() {
            return "unavailable".to_string();
        }
        if met.agent_only && WITHOUT_AGENT.contains(&mode.mode.as_str()) {
            return "n/a".to_string();
        }
        let Some(v) = mode.get(met.key) else {
            return "not measured".to_string();
        };
        let mut c = fmt_value(v);
        if mode.mode != "direct" && !met.agent_only {
            if let Some(r) = self.ratio(&mode.mode, met.key) {
                if met.latency {
                    let d = self.figure("direct", met.key).unwrap_or(0.0);
                    let _ = write!(c, " (+{:.0} {r:.1}x)", v - d);
                } else {
                    let _ = write!(c, " ({r:.2}x)");
                }
            }
        }
        c
    }

    /// The readable table: one row per measurement, one column per mode, each figure with
    /// its ratio to `direct` (and, for latencies, the time added); then the targets.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "meshd bench{}: {} cores, kernel {}, {} agent ({}), {} s per measurement, {}{}",
            if self.settings.quick { " --quick" } else { "" },
            m.cores,
            m.kernel,
            m.agent_build,
            m.agent_binary,
            self.settings.duration_secs,
            match self.settings.agent_workers {
                0 => "agents with their default worker threads".to_string(),
                1 => "1 worker thread per agent".to_string(),
                n => format!("{n} worker threads per agent"),
            },
            congestion_note(&self.settings),
        );
        // Wide enough for the longest label, so that every row's cells line up under the
        // header's mode names.
        let w0 = METRICS
            .iter()
            .map(|met| {
                format!("{} ({})", self.label(met), met.unit)
                    .chars()
                    .count()
            })
            .max()
            .unwrap_or(0)
            .max(44);
        let rows: Vec<(String, Vec<String>)> = METRICS
            .iter()
            .map(|met| {
                let label = format!("{} ({})", self.label(met), met.unit);
                let cells = self.modes.iter().map(|mode| self.cell(mode, met)).collect();
                (label, cells)
            })
            .collect();
        // Columns as wide as their widest cell (at least 21), so that a figure far off
        // (a latency of seconds under load) never runs into its neighbour.
        let w = rows
            .iter()
            .flat_map(|(_, cells)| cells.iter())
            .map(|c| c.chars().count())
            .chain(self.modes.iter().map(|m| m.mode.chars().count()))
            .max()
            .unwrap_or(0)
            .max(21);
        let _ = write!(out, "{:<w0$}", "measurement");
        for mode in &self.modes {
            let _ = write!(out, " {:>w$}", mode.mode);
        }
        out.push('\n');
        let _ = writeln!(out, "{}", "-".repeat(w0 + (w + 1) * self.modes.len()));
        for (label, cells) in rows {
            let _ = write!(out, "{label:<w0$}");
            for cell in cells {
                let _ = write!(out, " {cell:>w$}");
            }
            out.push('\n');
        }
        for mode in &self.modes {
            let _ = writeln!(out, "\n{}: {}", mode.mode, mode.description);
            if let Some(why) = &mode.unavailable {
                let _ = writeln!(out, "  unavailable: {why}");
            }
            for n in &mode.notes {
                let _ = writeln!(out, "  note: {n}");
            }
        }
        let _ = writeln!(out, "\ntargets (reported, not enforced):");
        for t in &self.targets {
            let v = t.value.map(fmt_value).unwrap_or_else(|| "-".into());
            match t.result.strip_prefix("n/a: ") {
                Some(why) => {
                    let _ = writeln!(out, "  {:<5} {:>8}  {} ({why})", "n/a", v, t.name);
                }
                None => {
                    let _ = writeln!(out, "  {:<5} {:>8}  {}", t.result, v, t.name);
                }
            }
        }
        out
    }
}

/// A figure as the table and comparisons print it.
pub fn fmt_value(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// `, TCP <algorithm>` when the report says which congestion control the run used.
fn congestion_note(s: &RunSettings) -> String {
    if s.congestion_control.is_empty() {
        String::new()
    } else {
        format!(", TCP {}", s.congestion_control)
    }
}

/// Two runs side by side: every figure of both, with the change from `a` to `b` in
/// percent (and whether that is better or worse).
pub fn compare(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A: unix time {} ({} agent, {}{}{})\nB: unix time {} ({} agent, {}{}{})\n",
        a.unix_time,
        a.machine.agent_build,
        a.machine.kernel,
        if a.settings.quick { ", quick" } else { "" },
        congestion_note(&a.settings),
        b.unix_time,
        b.machine.agent_build,
        b.machine.kernel,
        if b.settings.quick { ", quick" } else { "" },
        congestion_note(&b.settings),
    );
    let _ = writeln!(
        out,
        "{:<12} {:<46} {:>14} {:>14} {:>16}",
        "mode", "measurement", "A", "B", "change"
    );
    let mut modes: Vec<String> = a.modes.iter().map(|m| m.mode.clone()).collect();
    for m in &b.modes {
        if !modes.contains(&m.mode) {
            modes.push(m.mode.clone());
        }
    }
    let cell = |r: &Report, mode: &str, key: &str| -> (Option<f64>, String) {
        match r.mode(mode) {
            None => (None, "not run".into()),
            Some(m) if m.unavailable.is_some() => (None, "unavailable".into()),
            Some(m) => match m.get(key) {
                Some(v) => (Some(v), fmt_value(v)),
                None => (None, "-".into()),
            },
        }
    };
    for mode in &modes {
        for met in METRICS {
            if met.agent_only && WITHOUT_AGENT.contains(&mode.as_str()) {
                continue;
            }
            let (va, ca) = cell(a, mode, met.key);
            let (vb, cb) = cell(b, mode, met.key);
            let change = match (va, vb) {
                (Some(x), Some(y)) if x != 0.0 => {
                    let pct = (y - x) / x * 100.0;
                    let better = if met.higher_is_better {
                        pct > 0.0
                    } else {
                        pct < 0.0
                    };
                    let tag = if pct.abs() < 0.05 {
                        ""
                    } else if better {
                        " better"
                    } else {
                        " worse"
                    };
                    format!("{pct:+.1}%{tag}")
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "{:<12} {:<46} {:>14} {:>14} {:>16}",
                mode,
                format!("{} ({})", a.label(met), met.unit),
                ca,
                cb,
                change
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(name: &str, figures: &[(&str, f64)]) -> ModeReport {
        let mut m = ModeReport::new(name, "");
        for (k, v) in figures {
            m.figures.insert((*k).to_string(), *v);
        }
        m
    }

    fn report(modes: Vec<ModeReport>) -> Report {
        Report {
            unix_time: 0,
            machine: Machine {
                cores: 2,
                kernel: String::new(),
                agent_binary: String::new(),
                agent_build: String::new(),
                testapp_binary: String::new(),
            },
            settings: RunSettings {
                quick: true,
                duration_secs: 1,
                rate: 1000,
                cps_concurrency: 4,
                http_concurrency: 32,
                pods: 10,
                conns: 500,
                conns_max: 1000,
                cpu_requests: 5000,
                agent_workers: 1,
                congestion_control: "cubic".to_string(),
            },
            modes,
            targets: Vec::new(),
        }
    }

    fn target<'a>(r: &'a Report, starts: &str, ends: &str) -> &'a Target {
        r.targets
            .iter()
            .find(|t| t.name.starts_with(starts) && t.name.ends_with(ends))
            .unwrap_or_else(|| panic!("no target {starts}...{ends}: {:?}", r.targets))
    }

    /// Every row's cells end where the header's mode names end, also for the longest
    /// label.
    #[test]
    fn table_columns_line_up() {
        let mut direct = mode("direct", &[]);
        let mut mtls = mode("mtls", &[]);
        for (i, met) in METRICS.iter().enumerate() {
            direct.figures.insert(met.key.to_string(), 1.0 + i as f64);
            mtls.figures.insert(met.key.to_string(), 1000.0 + i as f64);
        }
        let r = report(vec![direct, mtls]);
        let table = r.table();
        let header = table
            .lines()
            .find(|l| l.starts_with("measurement"))
            .unwrap();
        for met in METRICS {
            let label = format!("{} ({})", r.label(met), met.unit);
            let row = table
                .lines()
                .find(|l| l.starts_with(&label))
                .unwrap_or_else(|| panic!("no row {label:?}\n{table}"));
            assert_eq!(row.len(), header.len(), "{row:?}\n{table}");
        }
    }

    /// Everything a report holds survives its JSON form (what `--compare` reads back).
    #[test]
    fn json_round_trip_keeps_every_field() {
        let mut direct = mode("direct", &[("throughput_1_gbps", 12.5), ("cps", 4321.0)]);
        direct.details.insert("cps".into(), json!({"failed": 0}));
        let mut mtls = mode(
            "mtls",
            &[("throughput_1_gbps", 3.25), ("agent_rss_idle_mb", 9.87)],
        );
        mtls.notes.push("latency: h2load failed".into());
        let mut relay = mode("relay", &[]);
        relay.unavailable = Some("relay did not start".into());
        let mut r = report(vec![direct, relay, mtls]);
        r.unix_time = 1_800_000_000;
        r.machine.kernel = "6.1.0".into();
        r.compute_targets();
        let text = serde_json::to_string_pretty(&r.to_json()).unwrap();
        let back = Report::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(Report::from_json(&json!({"schema": "other"})).is_err());
    }

    /// A comparison shows both figures and the change, better or worse by the metric's
    /// direction; an unavailable mode is shown as such.
    #[test]
    fn compare_names_the_changes() {
        let a = report(vec![
            mode(
                "direct",
                &[("throughput_1_gbps", 10.0), ("latency_p50_us", 50.0)],
            ),
            mode("mtls", &[("throughput_1_gbps", 4.0)]),
        ]);
        let mut b = report(vec![
            mode(
                "direct",
                &[("throughput_1_gbps", 12.0), ("latency_p50_us", 60.0)],
            ),
            mode("mtls", &[]),
        ]);
        b.modes[1].unavailable = Some("no identity".into());
        let cmp = compare(&a, &b);
        let line = |mode: &str, label: &str| {
            cmp.lines()
                .find(|l| l.starts_with(mode) && l.contains(label))
                .unwrap_or_else(|| panic!("no {mode} {label} line in\n{cmp}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(
            line("direct", "bulk TCP, 1 stream").ends_with("10.0 12.0 +20.0% better"),
            "{cmp}"
        );
        assert!(
            line("direct", "p50").ends_with("50.0 60.0 +20.0% worse"),
            "{cmp}"
        );
        assert!(
            line("mtls", "bulk TCP, 1 stream").ends_with("4.00 unavailable -"),
            "{cmp}"
        );
        // No agent figures for direct.
        assert!(
            !cmp.lines()
                .any(|l| l.starts_with("direct") && l.contains("agent RSS")),
            "{cmp}"
        );
    }

    #[test]
    fn latency_targets_are_time_added_over_direct() {
        let mut r = report(vec![
            mode(
                "direct",
                &[
                    ("latency_p50_us", 25.0),
                    ("latency_p99_us", 80.0),
                    // The spinning threads slowed direct at p50, not at p99.
                    ("latency_busy_p50_us", 40.0),
                    ("latency_busy_p99_us", 60.0),
                ],
            ),
            mode(
                "mtls",
                &[
                    ("latency_p50_us", 150.0),
                    ("latency_p99_us", 370.0),
                    ("latency_busy_p50_us", 120.0),
                    ("latency_busy_p99_us", 350.0),
                ],
            ),
        ]);
        r.compute_targets();
        let p50 = target(&r, "mtls p50 latency", "rps");
        assert_eq!((p50.value, p50.result.as_str()), (Some(125.0), "MISS"));
        let p99 = target(&r, "mtls p99 latency", "rps");
        assert_eq!((p99.value, p99.result.as_str()), (Some(290.0), "PASS"));
        // Busy: against the lower of direct's two figures (25 at p50, 60 at p99).
        let p50 = target(&r, "mtls p50 latency", "lower p50)");
        assert_eq!((p50.value, p50.result.as_str()), (Some(95.0), "PASS"));
        let p99 = target(&r, "mtls p99 latency", "lower p99)");
        assert_eq!((p99.value, p99.result.as_str()), (Some(290.0), "PASS"));
        // Throughput was not measured: not a pass.
        let t = target(&r, "mtls throughput (1 stream)", "direct");
        assert_eq!(t.result, "n/a: not measured");
    }
}
