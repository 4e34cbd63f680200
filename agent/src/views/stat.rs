//! `meshd stat`: per workload, like `linkerd viz stat`.

use serde_json::Value;

use super::{num, AdminClient, Output};

pub async fn run(client: &AdminClient, window_secs: u64, output: Output) -> anyhow::Result<()> {
    let text = client.get(&format!("/stat?window={window_secs}")).await?;
    if output == Output::Json {
        print!("{text}");
        return Ok(());
    }
    let rows: Vec<Value> = serde_json::from_str(&text)?;
    println!(
        "{:<20} {:<12} {:<9} {:<7} {:>8} {:>8} {:>12} {:>12} {:>12} {:>8} {:>12}",
        "NAME",
        "NAMESPACE",
        "DIRECTION",
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
        "UNAUTHORIZED"
    );
    for r in rows {
        let f = |k: &str| r[k].as_f64();
        println!(
            "{:<20} {:<12} {:<9} {:<7} {:>8} {:>8} {:>12} {:>12} {:>12} {:>8} {:>12}",
            r["deployment"].as_str().unwrap_or(""),
            r["namespace"].as_str().unwrap_or(""),
            r["direction"].as_str().unwrap_or(""),
            if r["meshed"] == true { "1/1" } else { "0/1" },
            f("success_rate")
                .map(|s| format!("{:.2}%", s * 100.0))
                .unwrap_or_else(|| "-".into()),
            num(f("rps"), 1),
            f("latency_ms_p50")
                .map(|v| format!("{v:.0}ms"))
                .unwrap_or_else(|| "-".into()),
            f("latency_ms_p95")
                .map(|v| format!("{v:.0}ms"))
                .unwrap_or_else(|| "-".into()),
            f("latency_ms_p99")
                .map(|v| format!("{v:.0}ms"))
                .unwrap_or_else(|| "-".into()),
            r["tcp_connections"].as_i64().unwrap_or(0),
            format!("{}rps", num(f("unauthorized_rps"), 1)),
        );
    }
    Ok(())
}
