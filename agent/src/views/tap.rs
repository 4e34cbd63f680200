//! `meshd tap`: live requests, like `linkerd viz tap`.

use serde_json::Value;

use super::{AdminClient, Output};

#[derive(clap::Args)]
pub struct TapArgs {
    /// Only requests of this workload (`namespace/pod` or `namespace/deployment`).
    #[arg(long)]
    pub workload: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    pub path: Option<String>,
    #[arg(long)]
    pub method: Option<String>,
    /// `inbound` or `outbound`.
    #[arg(long)]
    pub direction: Option<String>,
    /// Stop after this many requests.
    #[arg(long)]
    pub limit: Option<u64>,
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn run(client: &AdminClient, args: TapArgs, output: Output) -> anyhow::Result<()> {
    let mut q = Vec::new();
    for (k, v) in [
        ("workload", &args.workload),
        ("path", &args.path),
        ("method", &args.method),
        ("direction", &args.direction),
    ] {
        if let Some(v) = v {
            q.push(format!("{k}={}", encode(v)));
        }
    }
    if let Some(l) = args.limit {
        q.push(format!("limit={l}"));
    }
    let path = format!("/tap?{}", q.join("&"));
    client
        .stream_lines(&path, |line| {
            let Ok(ev) = serde_json::from_str::<Value>(line) else {
                return true;
            };
            if ev.get("tap").is_some() {
                if ev["tap"] == "lagged" {
                    eprintln!("(tap fell behind; {} requests not shown)", ev["missed"]);
                }
                return true;
            }
            if output == Output::Json {
                println!("{line}");
            } else {
                print_human(&ev);
            }
            true
        })
        .await
}

fn print_human(ev: &Value) {
    let s = |k: &str| ev[k].as_str().unwrap_or("").to_string();
    let peer = ev["peer"].as_object().map(|p| {
        format!(
            "{}/{}",
            p["namespace"].as_str().unwrap_or(""),
            p["pod"].as_str().unwrap_or("")
        )
    });
    let me = format!("{}/{}", s("namespace"), s("pod"));
    let (src, dst) = if s("direction") == "outbound" {
        (
            me,
            peer.or(ev["service"].as_str().map(String::from))
                .unwrap_or_else(|| s("authority")),
        )
    } else {
        (peer.unwrap_or_else(|| "-".into()), me)
    };
    let tls = if ev["tls"] == true {
        "true"
    } else {
        "no_identity"
    };
    println!(
        "req {} src={src} dst={dst} tls={tls} :method={} :authority={} :path={}",
        s("direction"),
        s("method"),
        s("authority"),
        s("path")
    );
    let grpc = ev["grpc_status"]
        .as_u64()
        .map(|g| format!(" grpc-status={g}"))
        .unwrap_or_default();
    println!(
        "rsp {} src={src} dst={dst} :status={} latency={:.1}ms{grpc} {}",
        s("direction"),
        ev["status"],
        ev["latency_ms"].as_f64().unwrap_or(0.0),
        if ev["success"] == true {
            "success"
        } else {
            "failure"
        }
    );
}
