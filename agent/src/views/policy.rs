//! `meshd diagnostics policy NS/WORKLOAD PORT`: what governs a port as the agent has
//! compiled it (like `linkerd diagnostics policy`): the server, the routes and the
//! authorizations in the order they are tried, the default policy, and what the
//! compilation reported.

use serde_json::Value;

use super::{AdminClient, Output};

/// Fetches `/policy` for `workload` (`namespace/name`) and `port`, and prints it.
pub async fn run(
    client: &AdminClient,
    workload: &str,
    port: u16,
    output: Output,
) -> anyhow::Result<()> {
    if !workload.contains('/') {
        anyhow::bail!("workload {workload:?}: expected NAMESPACE/NAME");
    }
    let body = client
        .get(&format!("/policy?workload={workload}&port={port}"))
        .await?;
    match output {
        Output::Json => println!("{}", body.trim_end()),
        Output::Table => {
            let v: Value = serde_json::from_str(&body)?;
            print!("{}", render(&v));
        }
    }
    Ok(())
}

fn meta(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    if s("group").is_empty() {
        format!("{}/{}", s("kind"), s("name"))
    } else {
        format!("{}:{}/{}", s("group"), s("kind"), s("name"))
    }
}

fn authorizations(out: &mut String, list: &Value, indent: &str) {
    let list = list.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        out.push_str(&format!("{indent}(none: nobody is allowed)\n"));
    }
    for a in list {
        let networks: Vec<String> = a["networks"]
            .as_array()
            .map(|n| n.iter().map(compact).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "{indent}{}  authentication={}  networks=[{}]\n",
            meta(&a["meta"]),
            compact(&a["authentication"]),
            networks.join(", ")
        ));
    }
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The table form.
pub fn render(v: &Value) -> String {
    let p = &v["policy"];
    let mut out = String::new();
    out.push_str(&format!(
        "WORKLOAD        {}  port {}{}\n",
        v["workload"].as_str().unwrap_or_default(),
        v["port"],
        if v["compiled"] == true {
            ""
        } else {
            "  (not compiled yet: the default policy)"
        }
    ));
    out.push_str(&format!("SERVER          {}\n", meta(&p["server"])));
    out.push_str(&format!("PROTOCOL        {}\n", compact(&p["protocol"])));
    out.push_str(&format!(
        "DEFAULT POLICY  {}\n",
        v["defaultPolicy"].as_str().unwrap_or_default()
    ));
    out.push_str("AUTHORIZATIONS  (server level, tried in order after a route's own)\n");
    authorizations(&mut out, &p["authorizations"], "  ");
    for (title, key) in [("HTTP ROUTES", "httpRoutes"), ("GRPC ROUTES", "grpcRoutes")] {
        let routes = p[key].as_array().cloned().unwrap_or_default();
        if routes.is_empty() {
            continue;
        }
        out.push_str(&format!("{title}\n"));
        for r in routes {
            out.push_str(&format!("  {}\n", meta(&r["meta"])));
            authorizations(&mut out, &r["authorizations"], "    ");
        }
    }
    let reports = v["reports"].as_array().cloned().unwrap_or_default();
    if !reports.is_empty() {
        out.push_str("REPORTS\n");
        for r in reports {
            out.push_str(&format!("  {}\n", compact(&r)));
        }
    }
    out
}
