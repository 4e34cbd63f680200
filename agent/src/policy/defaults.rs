//! Default inbound policies (Linkerd §2.3) and the settings the compiled policy depends on:
//! the agent's default, the cluster and probe networks, the trust domain.

use std::{fmt, str::FromStr};

use serde::Serialize;

use super::{
    authz::{Authentication, Authorization},
    meta::Meta,
    net::{Cidr, Network},
};

/// The annotation (on a namespace or a workload) that overrides the agent's default.
pub const DEFAULT_POLICY_ANNOTATION: &str = "config.linkerd.io/default-inbound-policy";
/// Ports on which the `*-unauthenticated` defaults become `*-authenticated`.
pub const REQUIRE_IDENTITY_ANNOTATION: &str =
    "config.linkerd.io/proxy-require-identity-inbound-ports";

/// Linkerd's default `clusterNetworks` (2.16+).
pub const DEFAULT_CLUSTER_NETWORKS: [&str; 5] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fd00::/8",
];

/// A default inbound policy; also a Server's `accessPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultPolicy {
    AllUnauthenticated,
    AllAuthenticated,
    ClusterUnauthenticated,
    ClusterAuthenticated,
    Deny,
    Audit,
}

impl DefaultPolicy {
    pub const ALL: [DefaultPolicy; 6] = [
        DefaultPolicy::AllUnauthenticated,
        DefaultPolicy::AllAuthenticated,
        DefaultPolicy::ClusterUnauthenticated,
        DefaultPolicy::ClusterAuthenticated,
        DefaultPolicy::Deny,
        DefaultPolicy::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DefaultPolicy::AllUnauthenticated => "all-unauthenticated",
            DefaultPolicy::AllAuthenticated => "all-authenticated",
            DefaultPolicy::ClusterUnauthenticated => "cluster-unauthenticated",
            DefaultPolicy::ClusterAuthenticated => "cluster-authenticated",
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Audit => "audit",
        }
    }

    /// The authenticated variant of an unauthenticated allow policy (for ports that require
    /// identity); others unchanged.
    pub fn authenticated(self) -> DefaultPolicy {
        match self {
            DefaultPolicy::AllUnauthenticated => DefaultPolicy::AllAuthenticated,
            DefaultPolicy::ClusterUnauthenticated => DefaultPolicy::ClusterAuthenticated,
            other => other,
        }
    }

    /// The authorization this policy implies (`None` for `deny`), labelled
    /// `default/<name>`.
    pub fn authorization(self, settings: &PolicySettings) -> Option<Authorization> {
        let (networks, authentication) = match self {
            DefaultPolicy::Deny => return None,
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => {
                (Network::everywhere(), Authentication::Unauthenticated)
            }
            DefaultPolicy::AllAuthenticated => {
                (Network::everywhere(), Authentication::any_meshed())
            }
            DefaultPolicy::ClusterUnauthenticated => (
                settings.cluster_networks.clone(),
                Authentication::Unauthenticated,
            ),
            DefaultPolicy::ClusterAuthenticated => (
                settings.cluster_networks.clone(),
                Authentication::any_meshed(),
            ),
        };
        Some(Authorization {
            meta: Meta::default_named(self.name()),
            networks,
            authentication,
        })
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Linkerd's webhook message for a bad value: `invalid mode: "allow-all"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mode: {0:?}")]
pub struct InvalidMode(pub String);

impl FromStr for DefaultPolicy {
    type Err = InvalidMode;

    fn from_str(s: &str) -> Result<DefaultPolicy, InvalidMode> {
        DefaultPolicy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| InvalidMode(s.to_string()))
    }
}

/// What the compiled policy depends on besides the policy documents and the workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    /// The agent's default inbound policy (Linkerd's install value).
    pub default_policy: DefaultPolicy,
    /// Used by the `cluster-*` policies and by ServerAuthorizations without networks.
    pub cluster_networks: Vec<Network>,
    /// Who may use the synthesized probe routes, without authentication.
    pub probe_networks: Vec<Network>,
    /// The trust domain of `ServiceAccount` references
    /// (`SA.NS.serviceaccount.identity.linkerd.TRUST_DOMAIN`).
    pub trust_domain: String,
}

impl Default for PolicySettings {
    fn default() -> PolicySettings {
        PolicySettings {
            default_policy: DefaultPolicy::AllUnauthenticated,
            cluster_networks: DEFAULT_CLUSTER_NETWORKS
                .iter()
                .map(|s| Network::new(Cidr::parse(s).expect("a valid literal")))
                .collect(),
            probe_networks: Network::everywhere(),
            trust_domain: crate::settings::DEFAULT_TRUST_DOMAIN.to_string(),
        }
    }
}

impl PolicySettings {
    /// The exact Linkerd-form identity of a service account.
    pub fn service_account_identity(&self, namespace: &str, name: &str) -> String {
        format!(
            "{name}.{namespace}.serviceaccount.identity.linkerd.{}",
            self.trust_domain
        )
    }

    /// The suffix every service account identity of a namespace ends with.
    pub fn namespace_identity_suffix(&self, namespace: &str) -> String {
        format!(
            "{namespace}.serviceaccount.identity.linkerd.{}",
            self.trust_domain
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_have_linkerds_message() {
        for p in DefaultPolicy::ALL {
            assert_eq!(p.name().parse::<DefaultPolicy>(), Ok(p));
        }
        assert_eq!(
            "allow-all"
                .parse::<DefaultPolicy>()
                .unwrap_err()
                .to_string(),
            "invalid mode: \"allow-all\""
        );
        assert_eq!(
            DefaultPolicy::ClusterUnauthenticated.authenticated(),
            DefaultPolicy::ClusterAuthenticated
        );
        assert!(DefaultPolicy::Deny
            .authorization(&PolicySettings::default())
            .is_none());
    }
}
