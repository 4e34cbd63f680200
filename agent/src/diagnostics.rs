//! `meshd diagnostics hbone`: open one HBONE tunnel by hand, as a given identity, to check
//! what a peer agent accepts (like `linkerd diagnostics`). It issues its own client
//! certificate from the issuer files, optionally with explicit validity, so expired and
//! not-yet-valid certificates can be tried too.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    identity::{client_config, CertManager, Identity, IssuerFiles},
    proxy::hbone,
};

#[derive(clap::Args)]
pub struct HboneArgs {
    #[arg(long)]
    trust_anchors: PathBuf,
    #[arg(long)]
    issuer_cert: PathBuf,
    #[arg(long)]
    issuer_key: PathBuf,
    /// The client identity to present (SPIFFE or Linkerd form).
    #[arg(long)]
    identity: Identity,
    /// The identity the server must present.
    #[arg(long)]
    expect_server: Identity,
    /// The peer's HBONE address, `ip:15008`.
    #[arg(long)]
    connect: SocketAddr,
    /// The CONNECT target (`:authority`).
    #[arg(long)]
    authority: SocketAddr,
    /// Client certificate validity start, in seconds relative to now (may be negative).
    #[arg(long, allow_hyphen_values = true)]
    not_before_secs: Option<i64>,
    /// Client certificate validity end, in seconds relative to now (may be negative).
    #[arg(long, allow_hyphen_values = true)]
    not_after_secs: Option<i64>,
    /// Bytes to send through the tunnel; the reply is printed.
    #[arg(long)]
    send: Option<String>,
}

fn relative(secs: i64) -> SystemTime {
    let now = SystemTime::now();
    if secs >= 0 {
        now + Duration::from_secs(secs as u64)
    } else {
        now - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Prints one JSON line: `{"stage": "tls"|"connect"|"done", "ok": bool, ...}`; exits 1
/// unless the tunnel opened.
pub async fn hbone(args: HboneArgs) -> anyhow::Result<bool> {
    let files = IssuerFiles {
        trust_anchors: args.trust_anchors,
        issuer_cert: args.issuer_cert,
        issuer_key: args.issuer_key,
    };
    let certs = Arc::new(CertManager::load(
        &files,
        crate::identity::DEFAULT_LEAF_TTL,
    )?);
    if args.not_before_secs.is_some() || args.not_after_secs.is_some() {
        let nb = relative(args.not_before_secs.unwrap_or(-60));
        let na = relative(args.not_after_secs.unwrap_or(3600));
        certs.install_with_validity(&args.identity, nb, na)?;
    }
    // The TLS config refers back to the manager weakly: keep it alive for the whole probe.
    let config = client_config(
        certs.clone(),
        args.identity.clone(),
        args.expect_server.clone(),
    )?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(args.connect),
    )
    .await
    .context("connect timed out")?
    .with_context(|| format!("connect {}", args.connect))?;
    let name = ServerName::try_from("hbone.meshd.local")?;
    let tls = match tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"stage": "tls", "ok": false, "error": e.to_string()})
            );
            return Ok(false);
        }
    };
    let (mut sender, conn) = hbone::client_builder().handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(conn);
    let req = hbone::connect_request(args.authority, None)?
        .map(|()| http_body_util::Empty::<bytes::Bytes>::new());
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            // A server that rejects our certificate after the handshake closes here.
            println!(
                "{}",
                serde_json::json!({"stage": "connect", "ok": false, "error": e.to_string()})
            );
            return Ok(false);
        }
    };
    let status = resp.status().as_u16();
    if status != 200 {
        println!(
            "{}",
            serde_json::json!({"stage": "connect", "ok": false, "status": status})
        );
        return Ok(false);
    }
    let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await?);
    let mut reply = String::new();
    if let Some(data) = args.send {
        tunnel.write_all(data.as_bytes()).await?;
        tunnel.shutdown().await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut buf)).await??;
        reply = String::from_utf8_lossy(&buf).into_owned();
    }
    drop(tunnel);
    drop(sender);
    driver.abort();
    drop(certs);
    println!(
        "{}",
        serde_json::json!({"stage": "done", "ok": true, "status": status, "reply": reply})
    );
    Ok(true)
}
