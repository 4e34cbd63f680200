//! HTTP and gRPC routes as compiled for a port, and how a request picks one (Linkerd
//! §2.6): hostnames, then the best-scoring rule match (path length, header count, query
//! count, method); ties keep the earlier route.

use hyper::http::{HeaderMap, Method, Uri};
use regex::Regex;
use serde::Serialize;

use super::{authz::Authorization, meta::Meta};

/// What a decision needs of an HTTP request: method, URI (path and query) and headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    pub fn from_parts(parts: &'a hyper::http::request::Parts) -> RequestHead<'a> {
        RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        }
    }

    /// The authority: `:authority` / the URI's, else the `Host` header, without the port.
    fn host(&self) -> Option<&'a str> {
        let host = match self.uri.host() {
            Some(h) => h,
            None => self.headers.get(hyper::http::header::HOST)?.to_str().ok()?,
        };
        Some(match host.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        })
    }

    /// Whether the request is gRPC (`content-type: application/grpc...`): denials are then
    /// answered with a gRPC status.
    pub fn is_grpc(&self) -> bool {
        self.headers
            .get(hyper::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    Exact(String),
    /// Stored without trailing `/` (`/` itself is stored as empty: matches everything).
    Prefix(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

fn ser_regex<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ValueMatch {
    Exact(String),
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

impl ValueMatch {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(s) => s.as_bytes() == value,
            ValueMatch::Regex(r) => std::str::from_utf8(value)
                .ok()
                .and_then(|v| r.find(v))
                .is_some_and(|m| m.start() == 0 && m.end() == value.len()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NameValueMatch {
    /// Lower-case for headers.
    pub name: String,
    pub value: ValueMatch,
}

/// One `matches[]` entry of an HTTPRoute rule: every condition must hold.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<NameValueMatch>,
    pub query_params: Vec<NameValueMatch>,
    pub method: Option<String>,
}

/// How well a request matched (higher wins), compared field by field in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct Score {
    host: (bool, usize),
    path: usize,
    headers: usize,
    query: usize,
    method: bool,
}

impl HttpMatch {
    fn score(&self, req: &RequestHead<'_>) -> Option<Score> {
        if let Some(m) = &self.method {
            if req.method.as_str() != m {
                return None;
            }
        }
        let path = req.uri.path();
        let path_len = match &self.path {
            None => 1,
            Some(PathMatch::Exact(p)) => (path == p).then_some(p.len())?,
            Some(PathMatch::Prefix(p)) => {
                if p.is_empty() {
                    1
                } else {
                    let trimmed = path.trim_end_matches('/');
                    let ok = trimmed == p
                        || (trimmed.starts_with(p.as_str())
                            && trimmed.as_bytes().get(p.len()) == Some(&b'/'));
                    ok.then_some(p.len())?
                }
            }
            Some(PathMatch::Regex(r)) => {
                let m = r.find(path)?;
                (m.start() == 0 && m.end() == path.len()).then_some(path.len())?
            }
        };
        for h in &self.headers {
            if !req
                .headers
                .get_all(h.name.as_str())
                .iter()
                .any(|v| h.value.matches(v.as_bytes()))
            {
                return None;
            }
        }
        if !self.query_params.is_empty() {
            let query = req.uri.query().unwrap_or("");
            for q in &self.query_params {
                let found = query.split('&').any(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    k == q.name && q.value.matches(v.as_bytes())
                });
                if !found {
                    return None;
                }
            }
        }
        Some(Score {
            host: (false, 0),
            path: path_len,
            headers: self.headers.len(),
            query: self.query_params.len(),
            method: self.method.is_some(),
        })
    }
}

/// A `hostnames` entry: exact, or `*.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HostMatch {
    Exact(String),
    Suffix(String),
}

impl HostMatch {
    pub fn parse(s: &str) -> HostMatch {
        match s.strip_prefix("*.") {
            Some(suffix) => HostMatch::Suffix(suffix.to_ascii_lowercase()),
            None => HostMatch::Exact(s.to_ascii_lowercase()),
        }
    }

    /// The length of the match (longer is more specific), if it matches.
    fn score(&self, host: &str) -> Option<usize> {
        let host = host.to_ascii_lowercase();
        match self {
            HostMatch::Exact(h) => (*h == host).then_some(usize::MAX),
            HostMatch::Suffix(s) => (host.len() > s.len() + 1
                && host.ends_with(s.as_str())
                && host.as_bytes()[host.len() - s.len() - 1] == b'.')
                .then_some(s.len()),
        }
    }
}

/// A route of an HTTP port: its labels, hostnames, rules (each a list of matches; an empty
/// list matches everything) and its own authorizations.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRoute {
    pub meta: Meta,
    pub hostnames: Vec<HostMatch>,
    pub rules: Vec<Vec<HttpMatch>>,
    pub authorizations: Vec<Authorization>,
}

fn host_score(hostnames: &[HostMatch], req: &RequestHead<'_>) -> Option<(bool, usize)> {
    if hostnames.is_empty() {
        return Some((false, 0));
    }
    let host = req.host()?;
    hostnames
        .iter()
        .filter_map(|h| h.score(host))
        .max()
        .map(|s| (true, s))
}

/// The best route for the request, or `None` (404).
pub fn best_http_route<'r>(
    routes: &'r [HttpRoute],
    req: &RequestHead<'_>,
) -> Option<&'r HttpRoute> {
    let mut best: Option<(Score, &HttpRoute)> = None;
    for route in routes {
        let Some(host) = host_score(&route.hostnames, req) else {
            continue;
        };
        for rule in &route.rules {
            let score = if rule.is_empty() {
                Some(Score {
                    path: 1,
                    ..Score::default()
                })
            } else {
                rule.iter().filter_map(|m| m.score(req)).max()
            };
            if let Some(mut score) = score {
                score.host = host;
                if best.as_ref().is_none_or(|(b, _)| score > *b) {
                    best = Some((score, route));
                }
            }
        }
    }
    best.map(|(_, r)| r)
}

/// One `matches[]` entry of a GRPCRoute rule.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GrpcMatch {
    pub service: Option<String>,
    pub method: Option<String>,
    pub headers: Vec<NameValueMatch>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GrpcRoute {
    pub meta: Meta,
    pub hostnames: Vec<HostMatch>,
    pub rules: Vec<Vec<GrpcMatch>>,
    pub authorizations: Vec<Authorization>,
}

/// The best gRPC route: the request must be `POST /SERVICE/METHOD`.
pub fn best_grpc_route<'r>(
    routes: &'r [GrpcRoute],
    req: &RequestHead<'_>,
) -> Option<&'r GrpcRoute> {
    if req.method != Method::POST {
        return None;
    }
    let (service, method) = req.uri.path().strip_prefix('/')?.split_once('/')?;
    if service.is_empty() || method.is_empty() || method.contains('/') {
        return None;
    }
    // (host score, service length, method length, header count) and the route.
    type Scored<'r> = (((bool, usize), usize, usize, usize), &'r GrpcRoute);
    let mut best: Option<Scored<'r>> = None;
    for route in routes {
        let Some(host) = host_score(&route.hostnames, req) else {
            continue;
        };
        for rule in &route.rules {
            let scored = if rule.is_empty() {
                Some((0, 0, 0))
            } else {
                rule.iter()
                    .filter_map(|m| {
                        if m.service.as_deref().is_some_and(|s| s != service)
                            || m.method.as_deref().is_some_and(|s| s != method)
                        {
                            return None;
                        }
                        let headers_ok = m.headers.iter().all(|h| {
                            req.headers
                                .get_all(h.name.as_str())
                                .iter()
                                .any(|v| h.value.matches(v.as_bytes()))
                        });
                        headers_ok.then_some((
                            m.service.as_ref().map_or(0, |s| s.len()),
                            m.method.as_ref().map_or(0, |s| s.len()),
                            m.headers.len(),
                        ))
                    })
                    .max()
            };
            if let Some((s, m, h)) = scored {
                let key = (host, s, m, h);
                if best.as_ref().is_none_or(|(b, _)| key > *b) {
                    best = Some((key, route));
                }
            }
        }
    }
    best.map(|(_, r)| r)
}
