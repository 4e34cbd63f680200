//! `MeshTLSAuthentication` and `NetworkAuthentication` (policy.linkerd.io v1alpha1).

use serde::Deserialize;

use super::{is_core, is_dns_like_identity, ObjectId, Refusal, IDENTITY_REGEX};
use crate::policy::net::{Cidr, Network};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawMeshTlsSpec {
    #[serde(default)]
    identities: Option<Vec<String>>,
    #[serde(default)]
    identity_refs: Option<Vec<RawIdentityRef>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawIdentityRef {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// Where the identities of a MeshTLSAuthentication come from; references are resolved when
/// the policy is compiled (they need the trust domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// `*`, `*.suffix`, an exact name or a SPIFFE ID.
    Literal(String),
    ServiceAccount {
        namespace: String,
        name: String,
    },
    /// Every service account of the namespace.
    Namespace(String),
}

#[derive(Debug, Clone)]
pub struct MeshTlsAuthentication {
    pub id: ObjectId,
    pub identities: Vec<IdentitySource>,
}

/// Linkerd 2.15+'s check of an `identities` entry: the DNS-like regex, or a SPIFFE ID.
pub(crate) fn check_identity(id: &str) -> Result<(), String> {
    if let Some(rest) = id.strip_prefix("spiffe://") {
        let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if domain.is_empty() {
            return Err("SPIFFE trust domain is missing".into());
        }
        if !domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err("SPIFFE trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores".into());
        }
        if !path.is_empty() {
            if path.ends_with('/') {
                return Err("SPIFFE path cannot have a trailing slash".into());
            }
            for seg in path.split('/') {
                if seg.is_empty() {
                    return Err("SPIFFE path cannot contain empty segments".into());
                }
                if seg == "." || seg == ".." {
                    return Err("SPIFFE path cannot contain dot segments".into());
                }
            }
        }
        return Ok(());
    }
    if is_dns_like_identity(id) {
        Ok(())
    } else {
        Err(format!(
            "id {id} is invalid: identity must be a valid SPIFFE id or a DNS SAN, matching the regex: {IDENTITY_REGEX}"
        ))
    }
}

impl RawMeshTlsSpec {
    pub(crate) fn validate(self, id: ObjectId) -> Result<MeshTlsAuthentication, Refusal> {
        let identities = match (self.identities, self.identity_refs) {
            (Some(ids), None) => {
                if ids.is_empty() {
                    return Err(Refusal::new(
                        "spec.identities",
                        "in body should have at least 1 items",
                    ));
                }
                let mut out = Vec::new();
                for (i, s) in ids.into_iter().enumerate() {
                    check_identity(&s)
                        .map_err(|m| Refusal::new(format!("spec.identities[{i}]"), m))?;
                    out.push(IdentitySource::Literal(s));
                }
                out
            }
            (None, Some(refs)) => {
                if refs.is_empty() {
                    return Err(Refusal::new(
                        "spec.identityRefs",
                        "in body should have at least 1 items",
                    ));
                }
                let mut out = Vec::new();
                for (i, r) in refs.into_iter().enumerate() {
                    let field = format!("spec.identityRefs[{i}]");
                    if r.kind.eq_ignore_ascii_case("ServiceAccount") && is_core(r.group.as_deref())
                    {
                        out.push(IdentitySource::ServiceAccount {
                            namespace: r.namespace.unwrap_or_else(|| id.namespace.clone()),
                            name: r.name,
                        });
                    } else if r.kind.eq_ignore_ascii_case("Namespace")
                        && is_core(r.group.as_deref())
                    {
                        if r.namespace.is_some() {
                            return Err(Refusal::new(
                                field,
                                "Namespace identity_ref is cluster-scoped and cannot have a namespace",
                            ));
                        }
                        out.push(IdentitySource::Namespace(r.name));
                    } else {
                        return Err(Refusal::new(
                            field,
                            format!("invalid identity target kind: {}", r.kind),
                        ));
                    }
                }
                out
            }
            _ => {
                return Err(Refusal::new(
                    "spec",
                    "exactly one of identities or identityRefs must be set",
                ))
            }
        };
        Ok(MeshTlsAuthentication { id, identities })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawNetworkSpec {
    #[serde(default)]
    networks: Vec<RawNetwork>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawNetwork {
    cidr: String,
    #[serde(default)]
    except: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NetworkAuthentication {
    pub id: ObjectId,
    pub networks: Vec<Network>,
}

/// A `{cidr, except}` entry, with the webhook's checks; `field` names it.
pub(crate) fn parse_network(raw: &RawNetwork, field: &str) -> Result<Network, Refusal> {
    let bad = |f: String| Refusal::new(f, "data did not match any variant of untagged enum Cidr");
    let net = Cidr::parse(&raw.cidr).ok_or_else(|| bad(format!("{field}.cidr")))?;
    let mut except = Vec::new();
    for (i, e) in raw.except.iter().enumerate() {
        let ex = Cidr::parse(e).ok_or_else(|| bad(format!("{field}.except[{i}]")))?;
        if ex.contains_net(&net) {
            return Err(Refusal::new(
                format!("{field}.except[{i}]"),
                format!(
                    "cidr '{}' is completely negated by exception '{e}'",
                    raw.cidr
                ),
            ));
        }
        if !net.contains_net(&ex) {
            return Err(Refusal::new(
                format!("{field}.except[{i}]"),
                format!("cidr '{}' does not include exception '{e}'", raw.cidr),
            ));
        }
        except.push(ex);
    }
    Ok(Network { net, except })
}

impl RawNetworkSpec {
    pub(crate) fn validate(self, id: ObjectId) -> Result<NetworkAuthentication, Refusal> {
        if self.networks.is_empty() {
            return Err(Refusal::new(
                "spec.networks",
                "at least one network must be specified",
            ));
        }
        let networks = self
            .networks
            .iter()
            .enumerate()
            .map(|(i, n)| parse_network(n, &format!("spec.networks[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(NetworkAuthentication { id, networks })
    }
}

pub(crate) use RawNetwork as RawNetworkEntry;
