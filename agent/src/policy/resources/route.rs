//! `HTTPRoute` (policy.linkerd.io v1beta1-v1beta3, gateway.networking.k8s.io v1) and
//! `GRPCRoute` (gateway.networking.k8s.io v1, v1alpha2) as inbound routes of a Server.

use regex::Regex;
use serde::Deserialize;

use super::{ObjectId, Refusal};
use crate::policy::routes::{
    GrpcMatch, HostMatch, HttpMatch, NameValueMatch, PathMatch, ValueMatch,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteGroup {
    Policy,
    Gateway,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawParentRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    section_name: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}

/// A `parentRefs` entry with the CRD's defaults applied (kind `Gateway`; group per API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub group: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub section_name: Option<String>,
    pub port: Option<u16>,
}

impl RawParentRef {
    fn into_ref(self, group: RouteGroup) -> ParentRef {
        ParentRef {
            group: self.group.unwrap_or_else(|| match group {
                RouteGroup::Policy => crate::policy::meta::POLICY_GROUP.into(),
                RouteGroup::Gateway => crate::policy::meta::GATEWAY_GROUP.into(),
            }),
            kind: self.kind.unwrap_or_else(|| "Gateway".into()),
            name: self.name,
            namespace: self.namespace,
            section_name: self.section_name,
            port: self.port,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawHttpRouteSpec {
    #[serde(default)]
    parent_refs: Vec<RawParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<RawHttpRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHttpRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<RawHttpMatch>,
    #[serde(default)]
    filters: Vec<RawFilter>,
    #[serde(default)]
    backend_refs: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    backend_request: Option<String>,
}

/// A filter: only its type matters for inbound policy, and a redirect's path.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFilter {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_redirect: Option<RawRedirect>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRedirect {
    #[serde(default)]
    path: Option<RawPathModifier>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPathModifier {
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawHttpMatch {
    #[serde(default)]
    path: Option<RawPath>,
    #[serde(default)]
    headers: Vec<RawNameValue>,
    #[serde(default)]
    query_params: Vec<RawNameValue>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPath {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNameValue {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Debug, Clone)]
pub struct HttpRouteResource {
    pub id: ObjectId,
    pub group: RouteGroup,
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<HostMatch>,
    pub rules: Vec<Vec<HttpMatch>>,
    /// Why the inbound index ignores this route (filters it cannot apply), if it does.
    pub ignored: Option<String>,
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn regex(field: &str, value: &str) -> Result<Regex, Refusal> {
    Regex::new(value)
        .map_err(|e| Refusal::new(field, format!("invalid regular expression {value:?}: {e}")))
}

fn value_match(field: &str, raw: &RawNameValue, lower: bool) -> Result<NameValueMatch, Refusal> {
    let value = match raw.kind.as_deref().unwrap_or("Exact") {
        "Exact" => ValueMatch::Exact(raw.value.clone()),
        "RegularExpression" => ValueMatch::Regex(regex(&format!("{field}.value"), &raw.value)?),
        other => {
            return Err(Refusal::new(
                format!("{field}.type"),
                format!("unknown variant `{other}`, expected `Exact` or `RegularExpression`"),
            ))
        }
    };
    Ok(NameValueMatch {
        name: if lower {
            raw.name.to_ascii_lowercase()
        } else {
            raw.name.clone()
        },
        value,
    })
}

/// Gateway API durations: `1h`, `10s`, `500ms`, `1m30s`.
fn duration_ms(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return None;
        };
        total += n * unit;
        rest = &rest[len..];
    }
    Some(total)
}

impl RawHttpRouteSpec {
    pub(crate) fn validate(
        self,
        id: ObjectId,
        group: RouteGroup,
    ) -> Result<HttpRouteResource, Refusal> {
        let mut rules = Vec::new();
        let mut ignored = None;
        for (ri, rule) in self.rules.into_iter().enumerate() {
            let _ = (&rule.name, &rule.backend_refs);
            let mut matches = Vec::new();
            for (mi, m) in rule.matches.into_iter().enumerate() {
                let field = format!("spec.rules[{ri}].matches[{mi}]");
                let path = match &m.path {
                    None => Some(PathMatch::Prefix(String::new())),
                    Some(p) => {
                        let value = p.value.clone().unwrap_or_else(|| "/".into());
                        let kind = p.kind.as_deref().unwrap_or("PathPrefix");
                        if (kind == "Exact" || kind == "PathPrefix") && !value.starts_with('/') {
                            return Err(Refusal::new(
                                format!("{field}.path.value"),
                                format!("HttpPathMatch paths must be absolute (begin with `/`); {value:?} is not an absolute path"),
                            ));
                        }
                        Some(match kind {
                            "Exact" => PathMatch::Exact(value),
                            "PathPrefix" => PathMatch::Prefix(value.trim_end_matches('/').to_string()),
                            "RegularExpression" => {
                                PathMatch::Regex(regex(&format!("{field}.path.value"), &value)?)
                            }
                            other => {
                                return Err(Refusal::new(
                                    format!("{field}.path.type"),
                                    format!("unknown variant `{other}`, expected one of `Exact`, `PathPrefix`, `RegularExpression`"),
                                ))
                            }
                        })
                    }
                };
                if let Some(method) = &m.method {
                    if !METHODS.contains(&method.as_str()) {
                        return Err(Refusal::new(
                            format!("{field}.method"),
                            format!(
                                "Unsupported value: {method:?}: supported values: \"{}\"",
                                METHODS.join("\", \"")
                            ),
                        ));
                    }
                }
                let headers = m
                    .headers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| value_match(&format!("{field}.headers[{i}]"), h, true))
                    .collect::<Result<_, _>>()?;
                let query_params = m
                    .query_params
                    .iter()
                    .enumerate()
                    .map(|(i, q)| value_match(&format!("{field}.queryParams[{i}]"), q, false))
                    .collect::<Result<_, _>>()?;
                matches.push(HttpMatch {
                    path,
                    headers,
                    query_params,
                    method: m.method,
                });
            }
            for (fi, f) in rule.filters.iter().enumerate() {
                let field = format!("spec.rules[{ri}].filters[{fi}]");
                if let Some(p) = f.request_redirect.as_ref().and_then(|r| r.path.as_ref()) {
                    for path in [&p.replace_full_path, &p.replace_prefix_match]
                        .into_iter()
                        .flatten()
                    {
                        if !path.starts_with('/') {
                            return Err(Refusal::new(
                                format!("{field}.requestRedirect.path"),
                                format!("RequestRedirect filters may only contain absolute paths (starting with '/'); {path:?} is not an absolute path"),
                            ));
                        }
                    }
                }
                match f.kind.as_str() {
                    "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestRedirect" => {}
                    other => {
                        ignored.get_or_insert_with(|| {
                            format!("filter {other} is not supported on inbound routes")
                        });
                    }
                }
            }
            if let Some(t) = &rule.timeouts {
                let field = format!("spec.rules[{ri}].timeouts");
                let parse = |name: &str, v: &Option<String>| -> Result<Option<u64>, Refusal> {
                    v.as_ref()
                        .map(|s| {
                            duration_ms(s).ok_or_else(|| {
                                Refusal::new(
                                    format!("{field}.{name}"),
                                    format!("invalid duration {s:?}"),
                                )
                            })
                        })
                        .transpose()
                };
                let request = parse("request", &t.request)?;
                let backend = parse("backendRequest", &t.backend_request)?;
                if let (Some(r), Some(b)) = (request, backend) {
                    if r != 0 && b > r {
                        return Err(Refusal::new(
                            field,
                            format!(
                                "backendRequest timeout ({}) must not be greater than request timeout ({})",
                                t.backend_request.as_deref().unwrap_or_default(),
                                t.request.as_deref().unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
            rules.push(matches);
        }
        if rules.is_empty() {
            // No rules: Gateway API's default is one rule matching everything.
            rules.push(Vec::new());
        }
        Ok(HttpRouteResource {
            id,
            group,
            parent_refs: self
                .parent_refs
                .into_iter()
                .map(|p| p.into_ref(group))
                .collect(),
            hostnames: self.hostnames.iter().map(|h| HostMatch::parse(h)).collect(),
            rules,
            ignored,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawGrpcRouteSpec {
    #[serde(default)]
    parent_refs: Vec<RawParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<RawGrpcRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGrpcRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<RawGrpcMatch>,
    #[serde(default)]
    filters: Vec<RawFilter>,
    #[serde(default)]
    backend_refs: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGrpcMatch {
    #[serde(default)]
    method: Option<RawGrpcMethod>,
    #[serde(default)]
    headers: Vec<RawNameValue>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawGrpcMethod {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GrpcRouteResource {
    pub id: ObjectId,
    pub parent_refs: Vec<ParentRef>,
    pub hostnames: Vec<HostMatch>,
    pub rules: Vec<Vec<GrpcMatch>>,
    pub ignored: Option<String>,
}

impl RawGrpcRouteSpec {
    pub(crate) fn validate(self, id: ObjectId) -> Result<GrpcRouteResource, Refusal> {
        let mut rules = Vec::new();
        let mut ignored = None;
        for (ri, rule) in self.rules.into_iter().enumerate() {
            let _ = (&rule.name, &rule.backend_refs);
            let mut matches = Vec::new();
            for (mi, m) in rule.matches.into_iter().enumerate() {
                let field = format!("spec.rules[{ri}].matches[{mi}]");
                let (service, method) = match m.method {
                    None => (None, None),
                    Some(mm) => {
                        if mm.service.is_none() && mm.method.is_none() {
                            return Err(Refusal::new(
                                format!("{field}.method"),
                                "One or both of 'service' or 'method' must be specified",
                            ));
                        }
                        match mm.kind.as_deref().unwrap_or("Exact") {
                            // Linkerd 2.17 compares RegularExpression method matches exactly.
                            "Exact" | "RegularExpression" => {}
                            other => {
                                return Err(Refusal::new(
                                    format!("{field}.method.type"),
                                    format!("unknown variant `{other}`, expected `Exact` or `RegularExpression`"),
                                ))
                            }
                        }
                        (mm.service, mm.method)
                    }
                };
                let headers = m
                    .headers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| value_match(&format!("{field}.headers[{i}]"), h, true))
                    .collect::<Result<_, _>>()?;
                matches.push(GrpcMatch {
                    service,
                    method,
                    headers,
                });
            }
            for f in &rule.filters {
                if !matches!(
                    f.kind.as_str(),
                    "RequestHeaderModifier" | "ResponseHeaderModifier"
                ) {
                    ignored.get_or_insert_with(|| {
                        format!("filter {} is not supported on inbound routes", f.kind)
                    });
                }
            }
            rules.push(matches);
        }
        if rules.is_empty() {
            rules.push(Vec::new());
        }
        Ok(GrpcRouteResource {
            id,
            parent_refs: self
                .parent_refs
                .into_iter()
                .map(|p| p.into_ref(RouteGroup::Gateway))
                .collect(),
            hostnames: self.hostnames.iter().map(|h| HostMatch::parse(h)).collect(),
            rules,
            ignored,
        })
    }
}
