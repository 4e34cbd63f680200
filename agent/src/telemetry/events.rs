//! What the proxy reports about each HTTP request: the request's own fields beside its
//! connection's context, serialized for `meshd tap` as one flat JSON object.

use std::sync::Arc;

use serde::{ser::SerializeStruct, Serialize, Serializer};

use crate::{conn::ConnContext, state::Workload};

/// One HTTP request as seen by this agent, on behalf of one enrolled workload.
#[derive(Debug, Clone)]
pub(crate) struct RequestEvent {
    /// The connection it travelled on.
    pub conn: Arc<ConnContext>,
    pub at_unix_ms: u128,
    pub method: String,
    pub authority: String,
    pub path: String,
    /// HTTP version, e.g. `HTTP/1.1`, `HTTP/2.0`.
    pub version: String,
    /// 0 when the request failed without a response.
    pub status: u16,
    /// gRPC status from the trailers (or headers), when the response is gRPC.
    pub grpc_status: Option<u32>,
    /// Linkerd's classification: not a 5xx, and gRPC status 0 when gRPC.
    pub success: bool,
    /// From the request's start to the end of the response headers, in milliseconds.
    pub latency_ms: f64,
    pub error: Option<String>,
}

/// The workload on the other side of a request, as a tap event shows it.
#[derive(Serialize)]
struct Peer<'a> {
    namespace: &'a str,
    pod: &'a str,
    deployment: &'a str,
}

impl<'a> From<&'a Workload> for Peer<'a> {
    fn from(w: &'a Workload) -> Peer<'a> {
        Peer {
            namespace: &w.namespace,
            pod: &w.name,
            deployment: &w.deployment,
        }
    }
}

/// The fields, in order: `at_unix_ms`, `direction`, the enrolled workload (`namespace`,
/// `pod`, `deployment`), `peer` (outbound: the destination workload; inbound: the source
/// workload; `null` when the mesh does not know it), `service` (outbound: the destination's
/// service), `tls`, `client_id`, `server_id`, then the request's own.
impl Serialize for RequestEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = &self.conn;
        let tls = c.tls();
        let mut e = s.serialize_struct("RequestEvent", 19)?;
        e.serialize_field("at_unix_ms", &self.at_unix_ms)?;
        e.serialize_field("direction", &c.direction)?;
        e.serialize_field("namespace", &c.workload.namespace)?;
        e.serialize_field("pod", &c.workload.name)?;
        e.serialize_field("deployment", &c.workload.deployment)?;
        e.serialize_field("peer", &c.peer_workload().map(|w| Peer::from(&**w)))?;
        e.serialize_field("service", &c.service().map(|s| s.key()))?;
        e.serialize_field("tls", &tls.is_some())?;
        e.serialize_field(
            "client_id",
            &tls.and_then(|t| t.client.as_ref()).map(ToString::to_string),
        )?;
        e.serialize_field("server_id", &tls.map(|t| t.server.to_string()))?;
        e.serialize_field("method", &self.method)?;
        e.serialize_field("authority", &self.authority)?;
        e.serialize_field("path", &self.path)?;
        e.serialize_field("version", &self.version)?;
        e.serialize_field("status", &self.status)?;
        e.serialize_field("grpc_status", &self.grpc_status)?;
        e.serialize_field("success", &self.success)?;
        e.serialize_field("latency_ms", &self.latency_ms)?;
        e.serialize_field("error", &self.error)?;
        e.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{testing::*, Direction, Tls};

    fn event(conn: ConnContext) -> RequestEvent {
        RequestEvent {
            conn: Arc::new(conn),
            at_unix_ms: 1_700_000_000_000,
            method: "GET".into(),
            authority: "web".into(),
            path: "/a".into(),
            version: "HTTP/1.1".into(),
            status: 503,
            grpc_status: Some(14),
            success: false,
            latency_ms: 1.5,
            error: Some("upstream".into()),
        }
    }

    /// The JSON of a tap event, field by field and in order, as `meshd tap` reads it.
    #[test]
    fn serializes_flat_in_the_tap_shape() {
        let c = context(Direction::Inbound)
            .with_peer_workload(Some(workload("curl-1", "curl", "10.0.0.1")))
            .with_tls(Tls {
                client: Some(identity("curl")),
                server: identity("web"),
            });
        let json = serde_json::to_string(&event(c)).expect("json");
        assert_eq!(
            json,
            concat!(
                r#"{"at_unix_ms":1700000000000,"direction":"inbound","namespace":"default","#,
                r#""pod":"web-1","deployment":"web","#,
                r#""peer":{"namespace":"default","pod":"curl-1","deployment":"curl"},"#,
                r#""service":null,"tls":true,"#,
                r#""client_id":"spiffe://cluster.local/ns/default/sa/curl","#,
                r#""server_id":"spiffe://cluster.local/ns/default/sa/web","#,
                r#""method":"GET","authority":"web","path":"/a","version":"HTTP/1.1","#,
                r#""status":503,"grpc_status":14,"success":false,"latency_ms":1.5,"#,
                r#""error":"upstream"}"#
            )
        );
        let plain = serde_json::to_value(event(context(Direction::Outbound))).expect("json");
        assert_eq!(plain["peer"], serde_json::Value::Null);
        assert_eq!(plain["tls"], false);
        assert_eq!(plain["client_id"], serde_json::Value::Null);
        assert_eq!(plain["server_id"], serde_json::Value::Null);
    }
}
