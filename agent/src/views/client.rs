//! A small HTTP/1.1 client for the agent's admin API.

use std::{net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, Method, Request, Response};
use hyper_util::rt::TokioIo;

pub struct AdminClient {
    pub addr: SocketAddr,
}

impl AdminClient {
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<Response<Incoming>> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .with_context(|| {
            format!(
                "connecting to the agent's admin API at {} timed out",
                self.addr
            )
        })?
        .with_context(|| {
            format!(
                "cannot reach the agent's admin API at {} (is meshd running? --admin)",
                self.addr
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .body(Full::new(body))?;
        Ok(sender.send_request(req).await?)
    }

    /// GET, the whole body as text; an error for a non-200 status.
    pub async fn get(&self, path: &str) -> anyhow::Result<String> {
        let resp = self.send(Method::GET, path, Bytes::new()).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", text.trim());
        }
        Ok(text)
    }

    pub async fn put(&self, path: &str, body: &str) -> anyhow::Result<String> {
        let resp = self
            .send(Method::PUT, path, Bytes::from(body.to_string()))
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&body).trim().to_string();
        if !status.is_success() {
            bail!("{text}");
        }
        Ok(text)
    }

    /// GET a streaming body, calling `line` for each complete line until it ends.
    pub async fn stream_lines(
        &self,
        path: &str,
        mut line: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<()> {
        let resp = self.send(Method::GET, path, Bytes::new()).await?;
        if !resp.status().is_success() {
            bail!("GET {path}: {}", resp.status());
        }
        let mut body = resp.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                buf.extend_from_slice(data);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let l: Vec<u8> = buf.drain(..=pos).collect();
                    if !line(String::from_utf8_lossy(&l).trim_end()) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}
