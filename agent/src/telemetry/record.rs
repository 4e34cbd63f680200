//! The `/connections` record of one connection: its [`ConnContext`] and how it ended,
//! serialized as one flat JSON object (the shape the admin API has always served).

use std::sync::Arc;

use serde::{ser::SerializeStruct, Serialize, Serializer};

use crate::conn::ConnContext;

/// One connection as `/connections` lists it.
#[derive(Debug, Clone)]
pub(crate) struct ConnRecord {
    pub conn: Arc<ConnContext>,
    /// How it ended; `None` while it is open.
    pub end: Option<Ended>,
}

/// Why a connection failed, kept as the typed error the proxy returned (`proxy::Error`);
/// it becomes text only when the record is served.
pub(crate) type ConnError = Arc<dyn std::error::Error + Send + Sync>;

/// How a connection ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ended {
    /// Bytes from the client towards the target.
    pub bytes_sent: u64,
    /// Bytes from the target back to the client.
    pub bytes_received: u64,
    /// Why it failed; `None` for a normal close by either side.
    pub error: Option<ConnError>,
    /// The agent closed it (cancelled through the registry, or stopped by the drain).
    pub by_agent: bool,
}

impl ConnRecord {
    pub(crate) fn closed(&self) -> bool {
        self.end.is_some()
    }

    /// The client's identity (mutual TLS only), as text.
    pub(crate) fn client_id(&self) -> Option<String> {
        let tls = self.conn.tls()?;
        tls.client.as_ref().map(ToString::to_string)
    }

    /// The server's identity (mutual TLS only), as text.
    pub(crate) fn server_id(&self) -> Option<String> {
        self.conn.tls().map(|t| t.server.to_string())
    }
}

/// The fields, in order: `id`, `direction`, `workload` (`namespace/name`), `peer` (the
/// client as the listener saw it), `orig_dst`, `target` (where the agent connected),
/// `service` (`namespace/name`), `opened_unix_ms`, `tls`, `client_id`, `server_id`,
/// `closed`, `bytes_sent`, `bytes_received`, `error`; and `closed_by_agent: true` when the
/// agent closed it (absent otherwise).
impl Serialize for ConnRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = &self.conn;
        let end = self.end.as_ref();
        let by_agent = end.is_some_and(|e| e.by_agent);
        let mut r = s.serialize_struct("ConnRecord", 15 + usize::from(by_agent))?;
        r.serialize_field("id", &c.id)?;
        r.serialize_field("direction", &c.direction)?;
        r.serialize_field("workload", &c.workload.key())?;
        r.serialize_field("peer", &c.peer)?;
        r.serialize_field("orig_dst", &c.orig_dst)?;
        r.serialize_field("target", &c.target())?;
        r.serialize_field("service", &c.service().map(|s| s.key()))?;
        r.serialize_field("opened_unix_ms", &c.opened_unix_ms())?;
        r.serialize_field("tls", &c.tls().is_some())?;
        r.serialize_field("client_id", &self.client_id())?;
        r.serialize_field("server_id", &self.server_id())?;
        r.serialize_field("closed", &self.closed())?;
        r.serialize_field("bytes_sent", &end.map_or(0, |e| e.bytes_sent))?;
        r.serialize_field("bytes_received", &end.map_or(0, |e| e.bytes_received))?;
        let error = end.and_then(|e| e.error.as_ref()).map(ToString::to_string);
        r.serialize_field("error", &error)?;
        if by_agent {
            r.serialize_field("closed_by_agent", &true)?;
        }
        r.end()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        conn::{testing::*, Direction, Tls},
        state::ServicePort,
    };

    /// An outbound connection to a service over HBONE, opened at a fixed time.
    fn outbound() -> Arc<ConnContext> {
        let mut c = context(Direction::Outbound);
        c.id = 7;
        c.opened = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let svc = ServicePort {
            name: "db".into(),
            namespace: "default".into(),
            vip: "10.96.0.1".parse().expect("vip"),
            port: 80,
            endpoints: vec![],
        };
        c.route(
            "10.0.0.3:8080".parse().expect("target"),
            Some(Arc::new(svc)),
        );
        c.secure(Tls {
            client: Some(identity("web")),
            server: identity("db"),
        });
        Arc::new(c)
    }

    /// The JSON of a record, field by field and in order, open and closed.
    #[test]
    fn serializes_flat_in_the_connections_shape() {
        let open = ConnRecord {
            conn: outbound(),
            end: None,
        };
        let head = concat!(
            r#"{"id":7,"direction":"outbound","workload":"default/web-1","#,
            r#""peer":"10.0.0.2:40000","orig_dst":"10.0.0.3:80","target":"10.0.0.3:8080","#,
            r#""service":"default/db","opened_unix_ms":1700000000123,"tls":true,"#,
            r#""client_id":"spiffe://cluster.local/ns/default/sa/web","#,
            r#""server_id":"spiffe://cluster.local/ns/default/sa/db","#,
        );
        assert_eq!(
            serde_json::to_string(&open).expect("json"),
            format!(r#"{head}"closed":false,"bytes_sent":0,"bytes_received":0,"error":null}}"#)
        );
        let closed = ConnRecord {
            end: Some(Ended {
                bytes_sent: 10,
                bytes_received: 20,
                error: Some(Arc::new(std::io::Error::other("reset"))),
                by_agent: false,
            }),
            ..open.clone()
        };
        assert_eq!(
            serde_json::to_string(&closed).expect("json"),
            format!(r#"{head}"closed":true,"bytes_sent":10,"bytes_received":20,"error":"reset"}}"#)
        );
        let by_agent = ConnRecord {
            end: Some(Ended {
                by_agent: true,
                ..Ended::default()
            }),
            ..open
        };
        assert_eq!(
            serde_json::to_string(&by_agent).expect("json"),
            format!(
                r#"{head}"closed":true,"bytes_sent":0,"bytes_received":0,"error":null,"closed_by_agent":true}}"#
            )
        );
    }

    #[test]
    fn a_plain_inbound_record_has_no_identities() {
        let r = ConnRecord {
            conn: Arc::new(context(Direction::Inbound)),
            end: None,
        };
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["direction"], "inbound");
        assert_eq!(v["tls"], false);
        assert_eq!(v["target"], serde_json::Value::Null);
        assert_eq!(v["service"], serde_json::Value::Null);
        assert_eq!(v["client_id"], serde_json::Value::Null);
        assert_eq!(v["server_id"], serde_json::Value::Null);
    }
}
