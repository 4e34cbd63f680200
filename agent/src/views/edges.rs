//! `meshd edges`: who talks to whom, with identities, like `linkerd viz edges`.

use serde_json::Value;

use super::{AdminClient, Output};

pub async fn run(client: &AdminClient, output: Output) -> anyhow::Result<()> {
    let text = client.get("/edges").await?;
    if output == Output::Json {
        print!("{text}");
        return Ok(());
    }
    let rows: Vec<Value> = serde_json::from_str(&text)?;
    println!(
        "{:<24} {:<24} {:<48} {:<48} {:<8} {:>6}",
        "SRC", "DST", "CLIENT_ID", "SERVER_ID", "SECURED", "CONNS"
    );
    for r in rows {
        let s = |k: &str| {
            r[k].as_str()
                .filter(|v| !v.is_empty())
                .unwrap_or("-")
                .to_string()
        };
        println!(
            "{:<24} {:<24} {:<48} {:<48} {:<8} {:>6}",
            s("src"),
            s("dst"),
            s("client_id"),
            s("server_id"),
            if r["secured"] == true { "√" } else { "×" },
            r["connections"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}
