//! `Server` (policy.linkerd.io v1beta1, v1beta2, v1beta3).

use serde::{Deserialize, Serialize};

use super::{ObjectId, Refusal};
use crate::policy::{defaults::DefaultPolicy, meta::LabelSelector};

/// `spec.port`: a number or a container port name. The type's name is in serde's message
/// for a bad value (`data did not match any variant of untagged enum Port`), as Linkerd's.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum Port {
    Number(i64),
    Name(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct RawServerSpec {
    #[serde(default)]
    pod_selector: Option<LabelSelector>,
    #[serde(default)]
    external_workload_selector: Option<LabelSelector>,
    #[serde(default)]
    port: Option<Port>,
    #[serde(default)]
    proxy_protocol: Option<String>,
    #[serde(default)]
    access_policy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ServerPort {
    Number(u16),
    Name(String),
}

/// `spec.proxyProtocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ProxyProtocol {
    /// `unknown`: detect HTTP, else TCP.
    Detect,
    Http1,
    Http2,
    Grpc,
    Opaque,
    Tls,
}

impl ProxyProtocol {
    const NAMES: [(&'static str, ProxyProtocol); 6] = [
        ("unknown", ProxyProtocol::Detect),
        ("HTTP/1", ProxyProtocol::Http1),
        ("HTTP/2", ProxyProtocol::Http2),
        ("gRPC", ProxyProtocol::Grpc),
        ("opaque", ProxyProtocol::Opaque),
        ("TLS", ProxyProtocol::Tls),
    ];

    /// Whether connections on the TCP path may be authorized (HTTP/1, HTTP/2 and gRPC
    /// servers carry no TCP authorizations).
    pub fn allows_tcp(self) -> bool {
        matches!(
            self,
            ProxyProtocol::Detect | ProxyProtocol::Opaque | ProxyProtocol::Tls
        )
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    pub id: ObjectId,
    /// `None`: only an `externalWorkloadSelector`, which selects no meshd workload.
    pub pod_selector: Option<LabelSelector>,
    pub port: ServerPort,
    pub protocol: ProxyProtocol,
    pub access_policy: DefaultPolicy,
}

impl RawServerSpec {
    pub(crate) fn validate(self, id: ObjectId, version: &str) -> Result<Server, Refusal> {
        let port = match self.port {
            None => return Err(Refusal::new("spec.port", "Required value")),
            Some(Port::Number(n)) => match u16::try_from(n) {
                Ok(n) if n > 0 => ServerPort::Number(n),
                _ => {
                    return Err(Refusal::new(
                        "spec.port",
                        "data did not match any variant of untagged enum Port",
                    ))
                }
            },
            Some(Port::Name(name)) => ServerPort::Name(name),
        };
        if version == "v1beta1" {
            if self.external_workload_selector.is_some() {
                return Err(Refusal::new(
                    "spec.externalWorkloadSelector",
                    "unknown field `externalWorkloadSelector` (Server v1beta2 and later)",
                ));
            }
            if self.pod_selector.is_none() {
                return Err(Refusal::new("spec.podSelector", "Required value"));
            }
        } else if self.pod_selector.is_some() == self.external_workload_selector.is_some() {
            return Err(Refusal::new(
                "spec",
                "exactly one of podSelector or externalWorkloadSelector must be set",
            ));
        }
        let protocol = match self.proxy_protocol.as_deref() {
            None => ProxyProtocol::Detect,
            Some(p) => ProxyProtocol::NAMES
                .iter()
                .find(|(name, _)| *name == p)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    Refusal::new(
                        "spec.proxyProtocol",
                        format!(
                            "unknown variant `{p}`, expected one of `unknown`, `HTTP/1`, `HTTP/2`, `gRPC`, `opaque`, `TLS`"
                        ),
                    )
                })?,
        };
        let access_policy = match self.access_policy {
            None => DefaultPolicy::Deny,
            Some(_) if version != "v1beta3" => {
                return Err(Refusal::new(
                    "spec.accessPolicy",
                    "unknown field `accessPolicy` (Server v1beta3 only)",
                ))
            }
            Some(p) => p.parse().map_err(|e| {
                Refusal::new(
                    "spec.accessPolicy",
                    format!("Invalid 'accessPolicy' field: {e}"),
                )
            })?,
        };
        Ok(Server {
            id,
            pod_selector: self.pod_selector,
            port,
            protocol,
            access_policy,
        })
    }
}
