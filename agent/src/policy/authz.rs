//! Compiled authorizations and how a client matches one (Linkerd §2.1): the client's
//! address must be in one of the networks (and in none of its exceptions), and its
//! authentication must satisfy the authorization's.

use std::net::IpAddr;

use serde::Serialize;

use super::{meta::Meta, net::Network};
use crate::identity::Identity;

/// Who is asking: the mTLS identity from the client's certificate (HBONE), or none
/// (plaintext), and the client's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub identity: Option<Identity>,
    pub addr: IpAddr,
}

impl Client {
    pub fn meshed(identity: Identity, addr: IpAddr) -> Client {
        Client {
            identity: Some(identity),
            addr,
        }
    }

    pub fn plaintext(addr: IpAddr) -> Client {
        Client {
            identity: None,
            addr,
        }
    }

    /// Whether the client is meshed (mTLS with an identity): only then do denials carry
    /// the `l5d-proxy-error` header.
    pub fn is_meshed(&self) -> bool {
        self.identity.is_some()
    }
}

/// An identity a `MeshTLSAuthentication`, `ServerAuthorization` or `ServiceAccount` reference
/// names. A meshd client's identity is a service account, so it has both forms,
/// `SA.NS.serviceaccount.identity.linkerd.TRUST_DOMAIN` and `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`;
/// an exact pattern in either form matches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum IdentityPattern {
    /// The exact string, Linkerd form or SPIFFE ID.
    Exact(String),
    /// Identities ending with `.SUFFIX` in the Linkerd form (`*.shop.serviceaccount...`);
    /// the empty suffix (`*`) matches every identity.
    Suffix(String),
}

impl IdentityPattern {
    /// Linkerd's reading of an `identities` entry: `*`, `*.SUFFIX` or an exact identity.
    pub fn parse(s: &str) -> IdentityPattern {
        if s == "*" {
            IdentityPattern::Suffix(String::new())
        } else if let Some(suffix) = s.strip_prefix("*.") {
            IdentityPattern::Suffix(suffix.to_string())
        } else {
            IdentityPattern::Exact(s.to_string())
        }
    }

    pub fn matches(&self, id: &Identity) -> bool {
        match self {
            IdentityPattern::Exact(s) => {
                if s.starts_with("spiffe://") {
                    *s == id.spiffe_id()
                } else {
                    *s == id.linkerd_name()
                }
            }
            IdentityPattern::Suffix(suffix) => {
                suffix.is_empty() || {
                    let name = id.linkerd_name();
                    name.len() > suffix.len() + 1
                        && name.ends_with(suffix.as_str())
                        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                }
            }
        }
    }
}

/// What a client must prove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Authentication {
    /// Anyone, meshed or not.
    Unauthenticated,
    /// TLS with the mesh; in meshd that is always with an identity (a ServerAuthorization's
    /// `unauthenticatedTLS`).
    TlsUnauthenticated,
    /// mTLS with an identity that one of the patterns matches.
    TlsAuthenticated(Vec<IdentityPattern>),
}

impl Authentication {
    /// Any meshed client (`*`).
    pub fn any_meshed() -> Authentication {
        Authentication::TlsAuthenticated(vec![IdentityPattern::Suffix(String::new())])
    }

    fn matches(&self, identity: Option<&Identity>) -> bool {
        match self {
            Authentication::Unauthenticated => true,
            Authentication::TlsUnauthenticated => identity.is_some(),
            Authentication::TlsAuthenticated(patterns) => {
                identity.is_some_and(|id| patterns.iter().any(|p| p.matches(id)))
            }
        }
    }
}

/// One authorization: its labels, the networks a client must come from and what it must
/// prove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Authorization {
    pub meta: Meta,
    pub networks: Vec<Network>,
    pub authentication: Authentication,
}

impl Authorization {
    pub fn matches(&self, client: &Client) -> bool {
        self.networks.iter().any(|n| n.contains(client.addr))
            && self.authentication.matches(client.identity.as_ref())
    }

    /// `default/audit`: allows, and is reported as a would-be denial.
    pub fn is_audit(&self) -> bool {
        self.meta.is_default() && self.meta.name == "audit"
    }

    /// `default/localhost`: 127.0.0.1 and ::1, no authentication, appended to every
    /// server's list (Linkerd's proxy does the same).
    pub fn localhost() -> Authorization {
        let net = |s: &str| Network::new(super::net::Cidr::parse(s).expect("a valid literal"));
        Authorization {
            meta: Meta::default_named("localhost"),
            networks: vec![net("127.0.0.1/32"), net("::1/128")],
            authentication: Authentication::Unauthenticated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        s.parse().unwrap()
    }

    #[test]
    fn identity_patterns() {
        let frontend = id("frontend.shop.serviceaccount.identity.linkerd.cluster.local");
        assert_eq!(frontend, id("spiffe://cluster.local/ns/shop/sa/frontend"));
        let exact =
            IdentityPattern::parse("frontend.shop.serviceaccount.identity.linkerd.cluster.local");
        let spiffe = IdentityPattern::parse("spiffe://cluster.local/ns/shop/sa/frontend");
        assert!(exact.matches(&frontend) && spiffe.matches(&frontend));
        let batch = id("spiffe://cluster.local/ns/jobs/sa/batch");
        assert!(!exact.matches(&batch) && !spiffe.matches(&batch));
        assert!(IdentityPattern::parse("*").matches(&batch));
        let shop = IdentityPattern::parse("*.shop.serviceaccount.identity.linkerd.cluster.local");
        assert!(shop.matches(&frontend) && !shop.matches(&batch));
        // A suffix is matched after a dot: `xshop` is not `shop`.
        let xshop = id("spiffe://cluster.local/ns/xshop/sa/a");
        assert!(!shop.matches(&xshop));
        // Another trust domain is another identity.
        let other = id("spiffe://other.domain/ns/shop/sa/frontend");
        assert!(!exact.matches(&other) && !shop.matches(&other));
        // A literal `*` inside an exact name never matches.
        assert!(!IdentityPattern::Exact("*.shop".into()).matches(&frontend));
    }
}
