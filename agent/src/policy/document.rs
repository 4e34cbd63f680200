//! Reading policy files: every document of a multi-document YAML file (as `kubectl apply
//! -f` reads it) becomes a validated [`Resource`], a refusal naming the file, line, kind,
//! namespace/name and field, or — for kinds that are not policy (a `Deployment`, a
//! `Namespace` in the same file) — a note that it was skipped.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::resources::{
    ObjectId, RawAuthorizationPolicySpec, RawGrpcRouteSpec, RawHttpRouteSpec, RawMeshTlsSpec,
    RawNetworkSpec, RawServerAuthorizationSpec, RawServerSpec, Refusal, Resource, RouteGroup,
};
use crate::{
    kube_names::{is_dns_label, is_dns_subdomain},
    policy::meta::{ObjectMeta, GATEWAY_GROUP, POLICY_GROUP},
    yaml::{self, YamlError},
};

/// A document that was refused, with where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DocumentError {
    pub file: PathBuf,
    pub line: u64,
    /// `Kind` (or `Kind.group` for a gateway route), when the document says.
    pub kind: Option<String>,
    /// `namespace/name`, when the document says.
    pub object: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        match (&self.kind, &self.object) {
            (Some(k), Some(o)) => write!(f, "{k} {o}: ")?,
            (Some(k), None) => write!(f, "{k}: ")?,
            _ => {}
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A document that is not a policy resource (left to Kubernetes), by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub file: PathBuf,
    pub line: u64,
    pub api_version: String,
    pub kind: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} {}: not a policy resource; skipped",
            self.file.display(),
            self.line,
            self.api_version,
            self.kind
        )
    }
}

/// A policy resource and where it was read.
#[derive(Debug, Clone)]
pub struct Located {
    pub resource: Resource,
    pub file: PathBuf,
    pub line: u64,
}

/// Everything a file held.
#[derive(Debug, Default)]
pub struct FileDocuments {
    pub resources: Vec<Located>,
    pub refused: Vec<DocumentError>,
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeaderMeta>,
}

#[derive(Debug, Deserialize)]
struct HeaderMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// The whole document of one kind: `metadata` and `spec`; `status` is accepted and ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Object<S> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: ObjectMeta,
    spec: Option<S>,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde::de::IgnoredAny>,
}

/// Reads every document of `text` (the contents of `file`).
pub fn parse_file(file: &Path, text: &str) -> FileDocuments {
    let mut out = FileDocuments::default();
    for doc in yaml::split_documents(text) {
        let refuse =
            |kind: Option<String>, object: Option<String>, r: Refusal, line: u64| DocumentError {
                file: file.to_owned(),
                line,
                kind,
                object,
                field: r.field,
                message: r.message,
            };
        let header: Header = match yaml::from_document(doc.text, doc.first_line) {
            Ok(h) => h,
            Err(e) => {
                out.refused
                    .push(yaml_refusal(file, doc.first_line, None, None, e));
                continue;
            }
        };
        let (Some(api_version), Some(kind)) = (header.api_version.clone(), header.kind.clone())
        else {
            out.refused.push(refuse(
                header.kind.clone(),
                None,
                Refusal::new("", "apiVersion and kind are required"),
                doc.first_line,
            ));
            continue;
        };
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let ns = header
            .metadata
            .as_ref()
            .and_then(|m| m.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let name = header.metadata.as_ref().and_then(|m| m.name.clone());
        let object = name.as_ref().map(|n| format!("{ns}/{n}"));
        if group != POLICY_GROUP && group != GATEWAY_GROUP {
            out.skipped.push(Skipped {
                file: file.to_owned(),
                line: doc.first_line,
                api_version,
                kind,
            });
            continue;
        }
        let label = if group == GATEWAY_GROUP && kind == "HTTPRoute" {
            format!("{kind}.{group}")
        } else {
            kind.clone()
        };
        match parse_object(group, version, &kind, doc.text, doc.first_line) {
            Ok(resource) => out.resources.push(Located {
                resource,
                file: file.to_owned(),
                line: doc.first_line,
            }),
            Err(ParseError::Yaml(e)) => {
                out.refused
                    .push(yaml_refusal(file, doc.first_line, Some(label), object, e))
            }
            Err(ParseError::Refused(r)) => {
                out.refused
                    .push(refuse(Some(label), object, r, doc.first_line))
            }
        }
    }
    out
}

fn yaml_refusal(
    file: &Path,
    first_line: u64,
    kind: Option<String>,
    object: Option<String>,
    e: YamlError,
) -> DocumentError {
    DocumentError {
        file: file.to_owned(),
        line: e.line.unwrap_or(first_line),
        kind,
        object,
        field: e.path,
        message: e.message,
    }
}

enum ParseError {
    Yaml(YamlError),
    Refused(Refusal),
}

impl From<Refusal> for ParseError {
    fn from(r: Refusal) -> ParseError {
        ParseError::Refused(r)
    }
}

fn read<S: serde::de::DeserializeOwned>(
    text: &str,
    first_line: u64,
) -> Result<(ObjectId, S), ParseError> {
    let obj: Object<S> = yaml::from_document(text, first_line).map_err(ParseError::Yaml)?;
    let m = obj.metadata;
    let name = m
        .name
        .ok_or_else(|| Refusal::new("metadata.name", "Required value"))?;
    if !is_dns_subdomain(&name) {
        return Err(Refusal::new(
            "metadata.name",
            format!("{name:?} is not a valid Kubernetes name"),
        )
        .into());
    }
    let namespace = m.namespace.unwrap_or_else(|| "default".into());
    if !is_dns_label(&namespace) {
        return Err(Refusal::new(
            "metadata.namespace",
            format!("{namespace:?} is not a valid namespace name"),
        )
        .into());
    }
    let created = match &m.creation_timestamp {
        None => None,
        Some(ts) => Some(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    Refusal::new(
                        "metadata.creationTimestamp",
                        format!("{ts:?} is not an RFC 3339 time: {e}"),
                    )
                })?
                .unix_timestamp(),
        ),
    };
    let spec = obj
        .spec
        .ok_or_else(|| Refusal::new("spec", "Required value"))?;
    Ok((
        ObjectId {
            namespace,
            name,
            labels: m.labels,
            created,
        },
        spec,
    ))
}

fn parse_object(
    group: &str,
    version: &str,
    kind: &str,
    text: &str,
    line: u64,
) -> Result<Resource, ParseError> {
    let unsupported = || {
        ParseError::Refused(Refusal::new(
            "",
            format!("unsupported resource type: {group}.{version}.{kind}"),
        ))
    };
    Ok(match (group, kind) {
        (POLICY_GROUP, "Server") if ["v1beta1", "v1beta2", "v1beta3"].contains(&version) => {
            let (id, spec) = read::<RawServerSpec>(text, line)?;
            Resource::Server(spec.validate(id, version)?)
        }
        (POLICY_GROUP, "ServerAuthorization") if version == "v1beta1" => {
            let (id, spec) = read::<RawServerAuthorizationSpec>(text, line)?;
            Resource::ServerAuthorization(spec.validate(id)?)
        }
        (POLICY_GROUP, "AuthorizationPolicy") if version == "v1alpha1" => {
            let (id, spec) = read::<RawAuthorizationPolicySpec>(text, line)?;
            Resource::AuthorizationPolicy(spec.validate(id)?)
        }
        (POLICY_GROUP, "MeshTLSAuthentication") if version == "v1alpha1" => {
            let (id, spec) = read::<RawMeshTlsSpec>(text, line)?;
            Resource::MeshTlsAuthentication(spec.validate(id)?)
        }
        (POLICY_GROUP, "NetworkAuthentication") if version == "v1alpha1" => {
            let (id, spec) = read::<RawNetworkSpec>(text, line)?;
            Resource::NetworkAuthentication(spec.validate(id)?)
        }
        (POLICY_GROUP, "HTTPRoute") if ["v1beta1", "v1beta2", "v1beta3"].contains(&version) => {
            let (id, spec) = read::<RawHttpRouteSpec>(text, line)?;
            Resource::HttpRoute(spec.validate(id, RouteGroup::Policy)?)
        }
        (GATEWAY_GROUP, "HTTPRoute") if version == "v1" => {
            let (id, spec) = read::<RawHttpRouteSpec>(text, line)?;
            Resource::HttpRoute(spec.validate(id, RouteGroup::Gateway)?)
        }
        (GATEWAY_GROUP, "GRPCRoute") if version == "v1" || version == "v1alpha2" => {
            let (id, spec) = read::<RawGrpcRouteSpec>(text, line)?;
            Resource::GrpcRoute(spec.validate(id)?)
        }
        _ => return Err(unsupported()),
    })
}
