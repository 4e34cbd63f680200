//! The registry of the connections the agent proxies: the open ones, which can be closed
//! from outside (policy closes those a change no longer allows), and the most recent closed
//! ones, served at the admin `/connections` endpoint.
//!
//! A handler registers a connection with [`Connections::open`] as soon as it is accepted
//! and gets a [`ConnGuard`]: the connection's relay waits on the guard's
//! [`ConnGuard::cancelled`] beside its I/O, and closes the record through the guard with
//! its byte counts and error. A guard dropped without that close (its task was aborted,
//! as the drain does at its deadline) closes the record as closed by the agent.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use super::{
    cancel::{CancelToken, Cancelled},
    error::Error,
};
use crate::{
    conn::ConnContext,
    telemetry::record::{ConnError, ConnRecord, Ended},
};

const KEEP_CLOSED: usize = 1024;

/// An open connection: its context and how to close it.
struct Open {
    conn: Arc<ConnContext>,
    cancel: CancelToken,
}

#[derive(Default)]
struct Inner {
    open: BTreeMap<u64, Open>,
    closed: VecDeque<ConnRecord>,
}

#[derive(Default)]
pub(crate) struct Connections {
    next_id: AtomicU64,
    inner: Mutex<Inner>,
}

impl Connections {
    /// Registers a connection just accepted (it gets the next id) and returns its guard.
    pub(crate) fn open(self: &Arc<Self>, mut conn: ConnContext) -> ConnGuard {
        conn.id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let conn = Arc::new(conn);
        let cancel = CancelToken::default();
        self.lock().open.insert(
            conn.id,
            Open {
                conn: conn.clone(),
                cancel: cancel.clone(),
            },
        );
        ConnGuard {
            conn,
            cancel,
            registry: self.clone(),
            open: true,
        }
    }

    /// Closes the open connection `id`: its relay stops and closes both sides. Returns
    /// whether it was open (and not cancelled before). Used when a policy change denies
    /// an open TCP connection.
    pub(crate) fn cancel(&self, id: u64) -> bool {
        self.lock()
            .open
            .get(&id)
            .is_some_and(|open| open.cancel.cancel())
    }

    /// Closes every open connection whose context matches; returns how many.
    pub(crate) fn cancel_where(&self, matches: impl Fn(&ConnContext) -> bool) -> usize {
        self.lock()
            .open
            .values()
            .filter(|open| matches(&open.conn))
            .filter(|open| open.cancel.cancel())
            .count()
    }

    /// Closes every open connection; returns how many.
    pub(crate) fn cancel_all(&self) -> usize {
        self.cancel_where(|_| true)
    }

    /// How many connections are open.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "for policy (next issue); tested here")
    )]
    pub(crate) fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    fn close(&self, id: u64, mut end: Ended) {
        let mut inner = self.lock();
        let Some(open) = inner.open.remove(&id) else {
            return;
        };
        end.by_agent |= open.cancel.is_cancelled();
        let conn = open.conn;
        tracing::debug!(
            id,
            direction = conn.direction.as_str(),
            workload = %conn.workload.key(),
            peer = %conn.peer,
            orig_dst = %conn.orig_dst,
            target = ?conn.target(),
            sent = end.bytes_sent,
            received = end.bytes_received,
            error = ?end.error,
            by_agent = end.by_agent,
            "connection closed"
        );
        if inner.closed.len() == KEEP_CLOSED {
            inner.closed.pop_front();
        }
        inner.closed.push_back(ConnRecord {
            conn,
            end: Some(end),
        });
    }

    /// Open connections first (oldest first), then the closed ones, newest last.
    pub(crate) fn snapshot(&self) -> Vec<ConnRecord> {
        let inner = self.lock();
        let open = inner.open.values().map(|open| ConnRecord {
            conn: open.conn.clone(),
            end: None,
        });
        open.chain(inner.closed.iter().cloned()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One open connection's place in the registry, held by its handler: the connection's
/// context, the signal to stop, and the close of its record.
pub(crate) struct ConnGuard {
    conn: Arc<ConnContext>,
    cancel: CancelToken,
    registry: Arc<Connections>,
    open: bool,
}

impl ConnGuard {
    pub(crate) fn context(&self) -> &Arc<ConnContext> {
        &self.conn
    }

    /// Resolves once the connection is to be closed (at once if it has been cancelled
    /// already): the relay then stops and closes both sides.
    pub(crate) fn cancelled(&self) -> Cancelled {
        self.cancel.cancelled()
    }

    /// Closes the record: `sent` bytes from the client towards the target, `received`
    /// back, and the error the connection ended with, if any.
    pub(crate) fn close(mut self, sent: u64, received: u64, error: Option<Error>) {
        self.open = false;
        self.registry.close(
            self.conn.id,
            Ended {
                bytes_sent: sent,
                bytes_received: received,
                error: error.map(|e| Arc::new(e) as ConnError),
                by_agent: false,
            },
        );
    }
}

impl Drop for ConnGuard {
    /// A connection whose handler did not close it was stopped from outside (its task
    /// aborted): closed by the agent.
    fn drop(&mut self) {
        if self.open {
            self.registry.close(
                self.conn.id,
                Ended {
                    by_agent: true,
                    ..Ended::default()
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::conn::{testing::*, Direction};

    fn registry() -> Arc<Connections> {
        Arc::new(Connections::default())
    }

    fn outbound(peer: SocketAddr) -> ConnContext {
        ConnContext::new(
            Direction::Outbound,
            workload("a", "a", "10.0.0.1"),
            peer,
            "10.0.0.2:80".parse().expect("dst"),
        )
    }

    /// An end as comparable values: bytes each way, the error's text, closed by the agent.
    fn summary(end: Option<&Ended>) -> Option<(u64, u64, Option<String>, bool)> {
        end.map(|e| {
            (
                e.bytes_sent,
                e.bytes_received,
                e.error.as_ref().map(ToString::to_string),
                e.by_agent,
            )
        })
    }

    fn ended(sent: u64, received: u64, error: Option<&str>) -> Ended {
        Ended {
            bytes_sent: sent,
            bytes_received: received,
            error: error.map(|e| Arc::new(std::io::Error::other(e.to_string())) as ConnError),
            by_agent: false,
        }
    }

    #[test]
    fn open_route_close() {
        let c = registry();
        let guard = c.open(outbound("10.0.0.1:1234".parse().unwrap()));
        guard
            .context()
            .route("10.0.0.3:8080".parse().unwrap(), None);
        assert!(!c.snapshot()[0].closed());
        guard.close(10, 20, None);
        let s = c.snapshot();
        assert_eq!(s.len(), 1);
        assert!(s[0].closed());
        let end = s[0].end.as_ref().unwrap();
        assert_eq!((end.bytes_sent, end.bytes_received), (10, 20));
        assert_eq!(s[0].conn.target().unwrap().port(), 8080);
        assert!(!end.by_agent);
    }

    /// `/connections` lists the open connections first (oldest opened first), then the
    /// closed ones in the order they closed, so the last record is the most recently closed
    /// one (what the integration tests read with `recs.last()`); only the newest 1,024
    /// closed records are kept, and a second close of the same connection changes nothing.
    #[test]
    fn open_first_then_closed_in_close_order_and_at_most_1024_closed() {
        let c = registry();
        let peer = |i: u64| SocketAddr::from(([10, 0, 0, 1], 1000 + i as u16));
        let mut guards: Vec<Option<ConnGuard>> =
            (0..1100).map(|i| Some(c.open(outbound(peer(i))))).collect();
        let ids: Vec<u64> = guards
            .iter()
            .map(|g| g.as_ref().unwrap().context().id)
            .collect();
        assert_eq!(ids, (1..=1100).collect::<Vec<_>>(), "ids count up from 1");

        // Close all but the first three, newest opened first: close order != open order.
        for (n, guard) in guards[3..].iter_mut().rev().enumerate() {
            guard.take().unwrap().close(n as u64, 0, None);
        }
        c.close(ids[5], ended(999_999, 1, Some("again")));

        let s = c.snapshot();
        assert_eq!(s.len(), 3 + 1024);
        let open: Vec<u64> = s[..3].iter().map(|r| r.conn.id).collect();
        assert_eq!(open, vec![1, 2, 3]);
        assert!(s[..3].iter().all(|r| !r.closed()));

        // 1,097 closed; the first 73 to close (ids 1100 down to 1028) were dropped.
        let closed: Vec<u64> = s[3..].iter().map(|r| r.conn.id).collect();
        assert_eq!(closed, (4..=1027).rev().collect::<Vec<_>>());
        assert!(s[3..].iter().all(|r| r.closed()));
        let last = s.last().unwrap();
        let end = last.end.as_ref().unwrap();
        assert_eq!(
            (last.conn.id, last.conn.peer, end.bytes_sent),
            (4, peer(3), 1096)
        );
        let fifth = s.iter().find(|r| r.conn.id == ids[5]).unwrap();
        let end = fifth.end.as_ref().unwrap();
        assert_eq!((end.bytes_sent, end.error.is_none()), (1094, true));

        // A connection that closes now is the new last record; the oldest kept one goes.
        guards[0]
            .take()
            .unwrap()
            .close(7, 8, Some(Error::Relay(std::io::Error::other("reset"))));
        let s = c.snapshot();
        assert_eq!(s.len(), 2 + 1024);
        let open: Vec<u64> = s[..2].iter().map(|r| r.conn.id).collect();
        assert_eq!(open, vec![2, 3]);
        assert_eq!(
            s[2].conn.id, 1026,
            "id 1027, the oldest closed record, was dropped"
        );
        let last = s.last().unwrap();
        assert_eq!(
            (last.conn.id, summary(last.end.as_ref())),
            (1, Some((7, 8, Some("reset".to_string()), false)))
        );
    }

    /// Whether `cancelled` has resolved.
    fn is_ready(cancelled: &mut Cancelled) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        std::pin::Pin::new(cancelled).poll(&mut cx).is_ready()
    }

    use std::future::Future;

    #[test]
    fn cancel_one() {
        let c = registry();
        let (a, b) = (
            c.open(outbound("10.0.0.1:1".parse().unwrap())),
            c.open(outbound("10.0.0.1:2".parse().unwrap())),
        );
        let (mut a_stop, mut b_stop) = (a.cancelled(), b.cancelled());
        assert!(c.cancel(a.context().id));
        assert!(!c.cancel(a.context().id), "cancelled once");
        assert!(!c.cancel(99), "no such connection");
        assert!(is_ready(&mut a_stop) && !is_ready(&mut b_stop));
        assert_eq!(c.open_count(), 2, "open until its relay closes it");
        // The relay stopped: its close is noted as the agent's.
        a.close(3, 4, None);
        b.close(5, 6, None);
        let s = c.snapshot();
        let by_agent: Vec<(u64, bool)> = s
            .iter()
            .map(|r| (r.conn.id, r.end.as_ref().unwrap().by_agent))
            .collect();
        assert_eq!(by_agent, vec![(1, true), (2, false)]);
        assert_eq!(c.open_count(), 0);
        assert!(!c.cancel(1), "closed already");
    }

    #[test]
    fn cancel_where_and_cancel_all() {
        let c = registry();
        let guards: Vec<ConnGuard> = (1..=4)
            .map(|port| c.open(outbound(SocketAddr::from(([10, 0, 0, 1], port)))))
            .collect();
        let mut stops: Vec<Cancelled> = guards.iter().map(ConnGuard::cancelled).collect();
        assert_eq!(c.cancel_where(|conn| conn.peer.port() % 2 == 0), 2);
        let stopped: Vec<bool> = stops.iter_mut().map(is_ready).collect();
        assert_eq!(stopped, vec![false, true, false, true]);
        // Only those not cancelled yet are counted.
        assert_eq!(c.cancel_all(), 2);
        assert!(stops.iter_mut().all(is_ready));
        assert_eq!(c.cancel_all(), 0);
        // A waiter made after the cancel resolves at once.
        assert!(is_ready(&mut guards[0].cancelled()));
        assert_eq!(c.open_count(), 4);
        drop(guards);
        assert_eq!(c.open_count(), 0);
    }

    #[test]
    fn a_dropped_guard_closes_the_record_as_closed_by_the_agent() {
        let c = registry();
        let guard = c.open(outbound("10.0.0.1:1".parse().unwrap()));
        assert_eq!(c.open_count(), 1);
        drop(guard);
        assert_eq!(c.open_count(), 0);
        let s = c.snapshot();
        assert_eq!(s.len(), 1);
        assert_eq!(summary(s[0].end.as_ref()), Some((0, 0, None, true)));
        let json = serde_json::to_value(&s[0]).unwrap();
        assert_eq!(
            (json["closed"].clone(), json["closed_by_agent"].clone()),
            (true.into(), true.into())
        );
    }
}
