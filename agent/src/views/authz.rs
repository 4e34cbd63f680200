//! `meshd authz`: per workload, server, route and authorization, the allowed requests'
//! success, rate and latency and the refused requests' rate, like `linkerd viz authz`
//! (from the agent's own window instead of Prometheus).

use serde_json::Value;

use super::{num, AdminClient, Output};

pub async fn run(
    client: &AdminClient,
    workload: Option<&str>,
    window_secs: u64,
    output: Output,
) -> anyhow::Result<()> {
    let text = client.get(&format!("/authz?window={window_secs}")).await?;
    let rows: Vec<Value> = serde_json::from_str(&text)?;
    let rows: Vec<Value> = rows
        .into_iter()
        .filter(|r| {
            workload.is_none_or(|w| {
                let (ns, deploy) = w.split_once('/').unwrap_or(("", w));
                (ns.is_empty() || r["namespace"] == ns) && r["deployment"] == deploy
            })
        })
        .collect();
    if output == Output::Json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    print!("{}", render(&rows));
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}ms")).unwrap_or_else(|| "-".into())
}

/// The table form, one line per row.
pub fn render(rows: &[Value]) -> String {
    let mut out = format!(
        "{:<24} {:<10} {:<30} {:<40} {:>12} {:>8} {:>8} {:>11} {:>11} {:>11}\n",
        "WORKLOAD",
        "ROUTE",
        "SERVER",
        "AUTHORIZATION",
        "UNAUTHORIZED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99"
    );
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        let f = |k: &str| r[k].as_f64();
        out.push_str(&format!(
            "{:<24} {:<10} {:<30} {:<40} {:>12} {:>8} {:>8} {:>11} {:>11} {:>11}\n",
            format!("{}/{}", s("namespace"), s("deployment")),
            s("route"),
            s("server"),
            s("authorization"),
            format!("{}rps", num(f("unauthorized_rps"), 1)),
            f("success_rate")
                .map(|v| format!("{:.2}%", v * 100.0))
                .unwrap_or_else(|| "-".into()),
            format!("{}rps", num(f("rps"), 1)),
            ms(f("latency_ms_p50")),
            ms(f("latency_ms_p95")),
            ms(f("latency_ms_p99")),
        ));
    }
    out
}
