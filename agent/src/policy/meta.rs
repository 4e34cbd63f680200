//! What every policy object has: `metadata` (name, namespace, labels, annotations, creation
//! time), label selectors and how they match, and the `group/kind/name` labels a decision
//! reports (Linkerd's `srv_*`, `route_*`, `authz_*` metric labels).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `metadata` of a policy document. Other metadata fields (`uid`, `resourceVersion`,
/// `managedFields`, ...) are accepted and ignored, so `kubectl get -o yaml` output reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; orders conflicting Servers and routes (oldest first).
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

/// A Kubernetes label selector: every `matchLabels` pair and every expression must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` are selected. An empty selector selects everything; `NotIn` selects
    /// objects without the key; `Exists` with values never matches (as Linkerd).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    SelectorOperator::In => value.is_some_and(|v| e.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                    SelectorOperator::Exists => e.values.is_empty() && value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// `group`, `kind` and `name` of what governed a decision, as Linkerd labels it: a Server
/// (`policy.linkerd.io`, `server`, NAME), a default (``, `default`, `deny`), a route, an
/// authorization.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Meta {
    pub group: String,
    pub kind: String,
    pub name: String,
}

pub const POLICY_GROUP: &str = "policy.linkerd.io";
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

impl Meta {
    pub fn new(group: &str, kind: &str, name: &str) -> Meta {
        Meta {
            group: group.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }

    /// A default-derived object: group ``, kind `default`.
    pub fn default_named(name: &str) -> Meta {
        Meta::new("", "default", name)
    }

    pub fn is_default(&self) -> bool {
        self.kind == "default"
    }
}

impl std::fmt::Display for Meta {
    /// `kind/name`, as Linkerd's errors write it (`server/web-http`, `default/deny`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors() {
        let web = labels(&[("app", "web"), ("tier", "frontend")]);
        assert!(LabelSelector::default().matches(&web));
        let sel = |text: &str| -> LabelSelector { crate::yaml::from_document(text, 1).unwrap() };
        assert!(sel("matchLabels: {app: web}").matches(&web));
        assert!(!sel("matchLabels: {app: db}").matches(&web));
        assert!(
            sel("matchExpressions: [{key: tier, operator: In, values: [frontend, x]}]")
                .matches(&web)
        );
        assert!(sel("matchExpressions: [{key: zone, operator: NotIn, values: [a]}]").matches(&web));
        assert!(
            !sel("matchExpressions: [{key: app, operator: NotIn, values: [web]}]").matches(&web)
        );
        assert!(sel("matchExpressions: [{key: app, operator: Exists}]").matches(&web));
        assert!(
            !sel("matchExpressions: [{key: app, operator: Exists, values: [web]}]").matches(&web)
        );
        assert!(sel("matchExpressions: [{key: zone, operator: DoesNotExist}]").matches(&web));
        assert!(!sel(
            "matchLabels: {app: web}\nmatchExpressions: [{key: tier, operator: DoesNotExist}]"
        )
        .matches(&web));
    }
}
