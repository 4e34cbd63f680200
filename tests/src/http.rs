//! A tiny HTTP/1.1 GET client over std TcpStream, run inside a network namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::netns::in_netns;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// `GET url` from inside the netns at `netns_path` (e.g. a node's, to reach an agent's
/// admin address). Returns (status, body). `url` must be `http://host:port/path`.
pub fn http_get(netns_path: &Path, url: &str) -> anyhow::Result<(u16, String)> {
    http_get_timeout(netns_path, url, DEFAULT_TIMEOUT)
}

/// [`http_get`] with an explicit connect/read/write timeout.
pub fn http_get_timeout(
    netns_path: &Path,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let (hostport, path) = parse_url(url)?;
    let addr: SocketAddr = hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no address for {hostport}"))?;
    let raw = in_netns(netns_path, || fetch(addr, &hostport, &path, timeout))?
        .with_context(|| format!("GET {url} in {}", netns_path.display()))?;
    parse_response(&raw).with_context(|| format!("parsing the response to GET {url}"))
}

fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if hostport.contains(':') && !hostport.ends_with(']') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    Ok((hostport, path.to_string()))
}

fn fetch(addr: SocketAddr, host: &str, path: &str, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshd-tests\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).context("sending the request")?;
    let mut buf = Vec::new();
    s.take(MAX_RESPONSE)
        .read_to_end(&mut buf)
        .context("reading the response")?;
    Ok(buf)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no end of headers in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(n) = length {
        body.get(..n)
            .ok_or_else(|| {
                anyhow::anyhow!("body shorter ({}) than content-length {n}", body.len())
            })?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow::anyhow!("truncated chunked body"))?;
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size_str = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .with_context(|| format!("bad chunk size {size_str:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = b
            .get(..size)
            .ok_or_else(|| anyhow::anyhow!("truncated chunk of {size} bytes"))?;
        out.extend_from_slice(chunk);
        b = b.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((s, b.as_str()), (200, "hi"));
        let (s, b) =
            parse_response(b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((s, b.as_str()), (404, "abcde"));
        let (s, b) = parse_response(b"HTTP/1.0 500 X\r\n\r\nclose-delimited").unwrap();
        assert_eq!((s, b.as_str()), (500, "close-delimited"));
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("http://10.240.0.1:15000/metrics").unwrap(),
            ("10.240.0.1:15000".into(), "/metrics".into())
        );
        assert_eq!(parse_url("http://h").unwrap(), ("h:80".into(), "/".into()));
        assert!(parse_url("https://h").is_err());
    }
}
