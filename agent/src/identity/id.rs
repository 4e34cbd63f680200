//! [`Identity`]: a workload's Kubernetes service account, as a SPIFFE ID.

use std::{fmt, str::FromStr};

use super::IdentityError;
use crate::kube_names::{check_dns_label, check_dns_subdomain};

/// The suffix between `SA.NS` and the trust domain in the Linkerd form of an identity.
const LINKERD_INFIX: &str = ".serviceaccount.identity.linkerd.";
const SPIFFE_SCHEME: &str = "spiffe://";

/// A workload identity: the Kubernetes service account `service_account` in `namespace`,
/// in the trust domain `trust_domain` (e.g. `cluster.local`).
///
/// It is displayed, and written into certificates (URI SAN), as the SPIFFE ID
/// `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`. [`FromStr`] also accepts the Linkerd form
/// `SA.NS.serviceaccount.identity.linkerd.TRUST_DOMAIN`, which names the same workload.
/// Nothing is case-folded: the scheme must be `spiffe://` and the trust domain lowercase, as
/// SPIFFE requires, so one identity has exactly one spelling.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The Kubernetes namespace.
    pub namespace: String,
    /// The Kubernetes service account name.
    pub service_account: String,
}

impl Identity {
    /// Builds an identity from its parts without checking them (they come from the
    /// Kubernetes API or a validated configuration). [`Identity::validate`] checks them;
    /// certificates are only issued for valid identities.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Identity {
        Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// Builds an identity from its parts and checks them ([`Identity::validate`]).
    pub fn try_new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Identity, IdentityError> {
        let id = Identity::new(trust_domain, namespace, service_account);
        id.validate()?;
        Ok(id)
    }

    /// Checks that the trust domain is a valid SPIFFE trust domain (lowercase letters,
    /// digits, `.`, `-`, `_`), the namespace a DNS-1123 label and the service account a
    /// DNS-1123 subdomain, as Kubernetes requires.
    pub fn validate(&self) -> Result<(), IdentityError> {
        let invalid = |reason: String| IdentityError::InvalidIdentity {
            input: self.to_string(),
            reason,
        };
        check_trust_domain(&self.trust_domain)
            .map_err(|r| invalid(format!("trust domain: {r}")))?;
        check_dns_label(&self.namespace).map_err(|r| invalid(format!("namespace: {r}")))?;
        check_dns_subdomain(&self.service_account)
            .map_err(|r| invalid(format!("service account: {r}")))?;
        Ok(())
    }

    /// The SPIFFE ID, `spiffe://TRUST_DOMAIN/ns/NS/sa/SA` (same as `to_string()`).
    pub fn spiffe_id(&self) -> String {
        self.to_string()
    }

    /// The Linkerd form, `SA.NS.serviceaccount.identity.linkerd.TRUST_DOMAIN`.
    pub fn linkerd_name(&self) -> String {
        format!(
            "{}.{}{LINKERD_INFIX}{}",
            self.service_account, self.namespace, self.trust_domain
        )
    }

    /// Parses only the SPIFFE form (what certificates carry).
    pub fn from_spiffe_id(s: &str) -> Result<Identity, IdentityError> {
        let invalid = |reason: &str| IdentityError::InvalidIdentity {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let rest = match s.strip_prefix(SPIFFE_SCHEME) {
            Some(rest) => rest,
            // SPIFFE IDs are compared as they are: no case-folding of the scheme.
            None if strip_prefix_ignore_case(s, SPIFFE_SCHEME).is_some() => {
                return Err(invalid("the scheme must be spiffe:// in lowercase"))
            }
            None => return Err(invalid("does not start with spiffe://")),
        };
        let (trust_domain, path) = rest.split_once('/').ok_or_else(|| {
            invalid("expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT")
        })?;
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = parts.as_slice() else {
            return Err(invalid("the path must be /ns/NAMESPACE/sa/SERVICE_ACCOUNT"));
        };
        if *ns_key != "ns" || *sa_key != "sa" {
            return Err(invalid("the path must be /ns/NAMESPACE/sa/SERVICE_ACCOUNT"));
        }
        // The trust domain as written: SPIFFE allows only lowercase, so an upper-case one is
        // refused by `validate`, never folded into another identity.
        let id = Identity::new(trust_domain, *namespace, *service_account);
        id.validate().map_err(|e| match e {
            IdentityError::InvalidIdentity { reason, .. } => IdentityError::InvalidIdentity {
                input: s.to_string(),
                reason,
            },
            other => other,
        })?;
        Ok(id)
    }

    /// Parses only the Linkerd form.
    pub fn from_linkerd_name(s: &str) -> Result<Identity, IdentityError> {
        let invalid = |reason: &str| IdentityError::InvalidIdentity {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        // The infix may also be inside a service account or a trust domain (both may have
        // dots): then the name reads two ways, and is refused rather than guessed.
        if s.matches(LINKERD_INFIX).nth(1).is_some() {
            return Err(invalid(
                "ambiguous: .serviceaccount.identity.linkerd. appears more than once",
            ));
        }
        let (sa_ns, trust_domain) = s.split_once(LINKERD_INFIX).ok_or_else(|| {
            invalid(
                "expected SERVICE_ACCOUNT.NAMESPACE.serviceaccount.identity.linkerd.TRUST_DOMAIN",
            )
        })?;
        // A namespace has no dots, a service account may: the namespace is the last label.
        let (service_account, namespace) = sa_ns
            .rsplit_once('.')
            .ok_or_else(|| invalid("expected SERVICE_ACCOUNT.NAMESPACE before .serviceaccount"))?;
        let id = Identity::new(trust_domain, namespace, service_account);
        id.validate().map_err(|e| match e {
            IdentityError::InvalidIdentity { reason, .. } => IdentityError::InvalidIdentity {
                input: s.to_string(),
                reason,
            },
            other => other,
        })?;
        Ok(id)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SPIFFE_SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    /// Parses the SPIFFE form `spiffe://TRUST_DOMAIN/ns/NS/sa/SA` or the Linkerd form
    /// `SA.NS.serviceaccount.identity.linkerd.TRUST_DOMAIN`.
    fn from_str(s: &str) -> Result<Identity, IdentityError> {
        if strip_prefix_ignore_case(s, SPIFFE_SCHEME).is_some() {
            Identity::from_spiffe_id(s)
        } else if s.contains(LINKERD_INFIX) {
            Identity::from_linkerd_name(s)
        } else {
            Err(IdentityError::InvalidIdentity {
                input: s.to_string(),
                reason: "expected spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT or \
                         SERVICE_ACCOUNT.NAMESPACE.serviceaccount.identity.linkerd.TRUST_DOMAIN"
                    .to_string(),
            })
        }
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Identity, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_`, at most 255 bytes.
pub(crate) fn check_trust_domain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".into());
    }
    if s.len() > 255 {
        return Err("is longer than 255 characters".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "contains {c:?} (allowed: lowercase letters, digits, '.', '-', '_')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_and_linkerd_forms_parse_to_the_same_identity() {
        let spiffe: Identity = "spiffe://cluster.local/ns/default/sa/web"
            .parse()
            .expect("spiffe form");
        let linkerd: Identity = "web.default.serviceaccount.identity.linkerd.cluster.local"
            .parse()
            .expect("linkerd form");
        assert_eq!(spiffe, linkerd);
        assert_eq!(spiffe, Identity::new("cluster.local", "default", "web"));
        assert_eq!(
            spiffe.to_string(),
            "spiffe://cluster.local/ns/default/sa/web"
        );
        assert_eq!(
            spiffe.linkerd_name(),
            "web.default.serviceaccount.identity.linkerd.cluster.local"
        );
        // Round trips.
        assert_eq!(
            spiffe
                .linkerd_name()
                .parse::<Identity>()
                .expect("round trip"),
            spiffe
        );
        assert_eq!(
            spiffe.to_string().parse::<Identity>().expect("round trip"),
            spiffe
        );
    }

    #[test]
    fn dotted_service_account() {
        let a: Identity = "my.sa.prod.serviceaccount.identity.linkerd.example.org"
            .parse()
            .expect("dotted sa");
        assert_eq!(a, Identity::new("example.org", "prod", "my.sa"));
        let b: Identity = "spiffe://example.org/ns/prod/sa/my.sa"
            .parse()
            .expect("spiffe form");
        assert_eq!(a, b);
    }

    /// Review case C49 (L6): an upper-case scheme or trust domain is refused, not folded
    /// into the lowercase identity.
    #[test]
    fn scheme_and_trust_domain_are_not_case_folded() {
        for (input, want) in [
            (
                "SPIFFE://cluster.local/ns/a/sa/b",
                "the scheme must be spiffe:// in lowercase",
            ),
            ("Spiffe://cluster.local/ns/a/sa/b", "the scheme must be"),
            (
                "spiffe://CLUSTER.LOCAL/ns/a/sa/b",
                "trust domain: contains 'C'",
            ),
            ("spiffe://Cluster.local/ns/a/sa/b", "trust domain"),
            (
                "b.a.serviceaccount.identity.linkerd.Cluster.Local",
                "trust domain",
            ),
        ] {
            let e = input.parse::<Identity>().expect_err(input).to_string();
            assert!(e.contains(want), "{input}: {e}");
            let e = Identity::from_spiffe_id(input)
                .map(|i| i.to_string())
                .unwrap_or_default();
            assert_eq!(e, "", "{input} parsed as SPIFFE");
        }
    }

    /// Found by the fuzz target `identity_parse`: a trust domain (or a service account)
    /// holding the Linkerd infix made a Linkerd name read as another identity.
    #[test]
    fn an_ambiguous_linkerd_name_is_refused() {
        let id = Identity::from_spiffe_id(
            "spiffe://b.a.serviceaccount.identity.linkerd.cluster.local/ns/n/sa/s",
        )
        .expect("a valid SPIFFE ID");
        let name = id.linkerd_name();
        assert_eq!(
            name,
            "s.n.serviceaccount.identity.linkerd.b.a.serviceaccount.identity.linkerd.cluster.local"
        );
        assert!(Identity::from_linkerd_name(&name).is_err());
        assert!(
            Identity::from_linkerd_name("s.n.serviceaccount.identity.linkerd.cluster.local")
                .is_ok()
        );
    }

    #[test]
    fn bad_strings_are_rejected_with_a_reason() {
        let cases = [
            ("", "expected spiffe://"),
            ("web", "expected spiffe://"),
            ("spiffe://", "expected spiffe://TRUST_DOMAIN"),
            ("spiffe://cluster.local", "expected spiffe://TRUST_DOMAIN"),
            ("spiffe:///ns/default/sa/web", "trust domain: is empty"),
            ("spiffe://cluster.local/ns/default", "the path must be"),
            (
                "spiffe://cluster.local/ns/default/sa/web/extra",
                "the path must be",
            ),
            (
                "spiffe://cluster.local/namespace/default/sa/web",
                "the path must be",
            ),
            ("spiffe://cluster.local/ns//sa/web", "namespace: is empty"),
            (
                "spiffe://cluster.local/ns/default/sa/",
                "service account: is empty",
            ),
            (
                "spiffe://cluster.local/ns/Default/sa/web",
                "namespace: \"Default\" contains 'D'",
            ),
            (
                "spiffe://cluster.local/ns/a.b/sa/web",
                "namespace: \"a.b\" contains '.'",
            ),
            (
                "spiffe://cluster.local/ns/default/sa/-web",
                "must start and end",
            ),
            (
                "spiffe://clus ter/ns/default/sa/web",
                "trust domain: contains ' '",
            ),
            (
                "spiffe://cluster.local:8080/ns/default/sa/web",
                "trust domain: contains ':'",
            ),
            (
                "http://cluster.local/ns/default/sa/web",
                "expected spiffe://",
            ),
            (
                "web.serviceaccount.identity.linkerd.cluster.local",
                "expected SERVICE_ACCOUNT.NAMESPACE",
            ),
            (
                "web.default.serviceaccount.identity.linkerd.",
                "trust domain: is empty",
            ),
            (
                ".default.serviceaccount.identity.linkerd.cluster.local",
                "service account: is empty",
            ),
        ];
        for (input, want) in cases {
            let err = input.parse::<Identity>().expect_err(input);
            let text = err.to_string();
            assert!(
                text.contains(want),
                "{input:?}: {text:?} should contain {want:?}"
            );
            assert!(
                text.contains(&format!("{input:?}")),
                "{text:?} should name the input"
            );
        }
    }

    #[test]
    fn validate_checks_parts_built_with_new() {
        assert!(Identity::new("cluster.local", "default", "web")
            .validate()
            .is_ok());
        assert!(Identity::try_new("cluster.local", "Default", "web").is_err());
        assert!(Identity::try_new("cluster.local", "default", "x".repeat(254)).is_err());
    }

    #[test]
    fn serde_uses_the_string_forms() {
        let id: Identity =
            serde_json::from_str("\"web.default.serviceaccount.identity.linkerd.cluster.local\"")
                .expect("deserialize");
        assert_eq!(
            serde_json::to_string(&id).expect("serialize"),
            "\"spiffe://cluster.local/ns/default/sa/web\""
        );
        assert!(serde_json::from_str::<Identity>("\"nope\"").is_err());
    }
}
