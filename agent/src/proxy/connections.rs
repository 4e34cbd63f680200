//! The agent's own account of the connections it proxies: the open ones and the most recent
//! closed ones, served at the admin `/connections` endpoint.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::SystemTime,
};

use serde::Serialize;

use super::error::Error;
use crate::telemetry::Direction;

const KEEP_CLOSED: usize = 1024;

/// Everything known about one proxied connection: the one place where its workload and
/// original destination meet (policy, identity and metrics build on this).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnRecord {
    pub id: u64,
    pub direction: Direction,
    /// `namespace/name` of the enrolled workload this connection belongs to.
    pub workload: String,
    /// The client, as the agent's listener saw it.
    pub peer: SocketAddr,
    /// Where the client meant to go.
    pub orig_dst: SocketAddr,
    /// Where the agent connected (an endpoint when `orig_dst` is a service).
    pub target: Option<SocketAddr>,
    /// `namespace/name` of the service `orig_dst` belongs to, if any.
    pub service: Option<String>,
    pub opened_unix_ms: u128,
    /// Mutual TLS (HBONE) on the hop between agents.
    pub tls: bool,
    /// The client's identity (inbound, from its certificate).
    pub client_id: Option<String>,
    /// The server's identity (outbound: verified; inbound: ours).
    pub server_id: Option<String>,
    pub closed: bool,
    /// Bytes from the client towards the target.
    pub bytes_sent: u64,
    /// Bytes from the target back to the client.
    pub bytes_received: u64,
    /// Why the connection failed; `None` when it closed normally.
    #[serde(serialize_with = "as_text")]
    pub error: Option<Arc<Error>>,
}

/// The error as its message, the one place it becomes text for `/connections`.
fn as_text<S: serde::Serializer>(e: &Option<Arc<Error>>, s: S) -> Result<S::Ok, S::Error> {
    match e {
        Some(e) => s.collect_str(e),
        None => s.serialize_none(),
    }
}

#[derive(Default)]
struct Inner {
    open: BTreeMap<u64, ConnRecord>,
    closed: VecDeque<ConnRecord>,
}

#[derive(Default)]
pub(crate) struct Connections {
    next_id: AtomicU64,
    inner: Mutex<Inner>,
}

impl Connections {
    pub(crate) fn open(
        &self,
        direction: Direction,
        workload: String,
        peer: SocketAddr,
        orig_dst: SocketAddr,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let rec = ConnRecord {
            id,
            direction,
            workload,
            peer,
            orig_dst,
            target: None,
            service: None,
            opened_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or_default(),
            tls: false,
            client_id: None,
            server_id: None,
            closed: false,
            bytes_sent: 0,
            bytes_received: 0,
            error: None,
        };
        self.lock().open.insert(id, rec);
        id
    }

    pub(crate) fn routed(&self, id: u64, target: SocketAddr, service: Option<String>) {
        if let Some(rec) = self.lock().open.get_mut(&id) {
            rec.target = Some(target);
            rec.service = service;
        }
    }

    /// Records that the connection is carried over mutual TLS between these identities.
    pub(crate) fn secured(&self, id: u64, client_id: Option<String>, server_id: Option<String>) {
        if let Some(rec) = self.lock().open.get_mut(&id) {
            rec.tls = true;
            rec.client_id = client_id;
            rec.server_id = server_id;
        }
    }

    pub(crate) fn close(&self, id: u64, sent: u64, received: u64, error: Option<Error>) {
        let mut inner = self.lock();
        if let Some(mut rec) = inner.open.remove(&id) {
            rec.closed = true;
            rec.bytes_sent = sent;
            rec.bytes_received = received;
            rec.error = error.map(Arc::new);
            tracing::debug!(
                id,
                direction = rec.direction.as_str(),
                workload = %rec.workload,
                peer = %rec.peer,
                orig_dst = %rec.orig_dst,
                target = ?rec.target,
                sent,
                received,
                error = rec.error.as_ref().map(tracing::field::display),
                "connection closed"
            );
            if inner.closed.len() == KEEP_CLOSED {
                inner.closed.pop_front();
            }
            inner.closed.push_back(rec);
        }
    }

    /// Open connections first, then the closed ones, newest last.
    pub(crate) fn snapshot(&self) -> Vec<ConnRecord> {
        let inner = self.lock();
        inner
            .open
            .values()
            .chain(inner.closed.iter())
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> Option<Error> {
        Some(Error::Relay(std::io::Error::other(text.to_string())))
    }

    fn text(r: &ConnRecord) -> Option<String> {
        r.error.as_ref().map(|e| e.to_string())
    }

    #[test]
    fn open_route_close() {
        let c = Connections::default();
        let a = "10.0.0.1:1234".parse().unwrap();
        let d = "10.0.0.2:80".parse().unwrap();
        let id = c.open(Direction::Outbound, "default/a".into(), a, d);
        c.routed(
            id,
            "10.0.0.3:8080".parse().unwrap(),
            Some("default/web".into()),
        );
        assert!(!c.snapshot()[0].closed);
        c.close(id, 10, 20, None);
        let s = c.snapshot();
        assert_eq!(s.len(), 1);
        assert!(s[0].closed);
        assert_eq!((s[0].bytes_sent, s[0].bytes_received), (10, 20));
        assert_eq!(s[0].target.unwrap().port(), 8080);
    }

    /// `/connections` lists the open connections first (oldest opened first), then the
    /// closed ones in the order they closed, so the last record is the most recently closed
    /// one (what the integration tests read with `recs.last()`); only the newest 1,024
    /// closed records are kept, and a second close of the same connection changes nothing.
    #[test]
    fn open_first_then_closed_in_close_order_and_at_most_1024_closed() {
        let c = Connections::default();
        let peer = |i: u64| SocketAddr::from(([10, 0, 0, 1], 1000 + i as u16));
        let dst: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let ids: Vec<u64> = (0..1100)
            .map(|i| c.open(Direction::Outbound, "default/a".into(), peer(i), dst))
            .collect();
        assert_eq!(ids, (1..=1100).collect::<Vec<_>>(), "ids count up from 1");

        // Close all but the first three, newest opened first: close order != open order.
        for (n, &id) in ids[3..].iter().rev().enumerate() {
            c.close(id, n as u64, 0, None);
        }
        c.close(ids[5], 999_999, 1, err("again"));

        let s = c.snapshot();
        assert_eq!(s.len(), 3 + 1024);
        let open: Vec<u64> = s[..3].iter().map(|r| r.id).collect();
        assert_eq!(open, vec![1, 2, 3]);
        assert!(s[..3].iter().all(|r| !r.closed));

        // 1,097 closed; the first 73 to close (ids 1100 down to 1028) were dropped.
        let closed: Vec<u64> = s[3..].iter().map(|r| r.id).collect();
        assert_eq!(closed, (4..=1027).rev().collect::<Vec<_>>());
        assert!(s[3..].iter().all(|r| r.closed));
        let last = s.last().unwrap();
        assert_eq!((last.id, last.peer, last.bytes_sent), (4, peer(3), 1096));
        let fifth = s.iter().find(|r| r.id == ids[5]).unwrap();
        assert_eq!((fifth.bytes_sent, text(fifth)), (1094, None));

        // A connection that closes now is the new last record; the oldest kept one goes.
        c.close(ids[0], 7, 8, err("reset"));
        let s = c.snapshot();
        assert_eq!(s.len(), 2 + 1024);
        assert_eq!(s[..2].iter().map(|r| r.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(
            s[2].id, 1026,
            "id 1027, the oldest closed record, was dropped"
        );
        let last = s.last().unwrap();
        assert_eq!(
            (last.id, last.bytes_sent, last.bytes_received, text(last)),
            (1, 7, 8, Some("reset".to_string()))
        );
    }
}
