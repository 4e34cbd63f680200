//! Connection and handshake budgets (review M2): every pod on the node shares one agent
//! process, its file descriptors and its memory, so a pod (or one remote client hitting
//! one pod) gets a bounded share of them. A connection takes a slot of its pod's budget
//! for its direction and a socket of the node's budget when it is accepted (an HBONE
//! tunnel: for the socket to the app), and one more socket when it dials a plain upstream;
//! it gives them back when it ends. The node's budget counts sockets, not connections,
//! because that is what runs out: a relayed connection holds two, one over HBONE one. A
//! TLS handshake on port 15008 also takes a handshake slot of its pod and of the node
//! until the HTTP/2 connection is set up. When a budget is full the new connection is
//! refused at once (a reset, or `REFUSED_STREAM` for an HBONE tunnel) and counted; nothing
//! waits in a queue.
//!
//! Budgets are per direction: a flood of a pod's inbound (plaintext connections, HBONE
//! connections and their tunnels together: what reaches its apps) cannot stop the pod's
//! own outbound connections, and a pod that opens too many connections can still be
//! reached.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::{
    conn::Direction,
    state::Workload,
    telemetry::metrics::{Metrics, RefusedLabels},
};

/// The sizes of the budgets (see `docs/configuration.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Sockets of proxied connections, every pod and direction together.
    pub max_sockets: usize,
    /// Proxied connections of one pod in one direction.
    pub max_connections_per_pod: usize,
    /// TLS handshakes in progress on port 15008, every pod together.
    pub max_handshakes: usize,
    /// TLS handshakes in progress on one pod's port 15008.
    pub max_handshakes_per_pod: usize,
}

/// Which budget was full: the `reason` label of `connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Exhausted {
    #[error("the pod's connection budget is full")]
    PodConnections,
    #[error("the node's socket budget is full")]
    Sockets,
    #[error("the pod's TLS handshake budget is full")]
    PodHandshakes,
    #[error("the node's TLS handshake budget is full")]
    Handshakes,
}

impl Exhausted {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Exhausted::PodConnections => "pod_connections",
            Exhausted::Sockets => "node_sockets",
            Exhausted::PodHandshakes => "pod_handshakes",
            Exhausted::Handshakes => "node_handshakes",
        }
    }
}

/// A counter with a ceiling; [`Budget::take`] hands out a [`Slot`] while it is below.
#[derive(Debug, Clone)]
pub(crate) struct Budget(Arc<BudgetInner>);

#[derive(Debug)]
struct BudgetInner {
    limit: usize,
    used: AtomicUsize,
}

/// One place in a [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<BudgetInner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Budget {
        Budget(Arc::new(BudgetInner {
            limit,
            used: AtomicUsize::new(0),
        }))
    }

    /// A slot, or `None` when `limit` slots are out.
    pub(crate) fn take(&self) -> Option<Slot> {
        self.0
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.0.limit).then_some(u + 1)
            })
            .ok()
            .map(|_| Slot(self.0.clone()))
    }

    /// Slots out now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.0.used.load(Ordering::Acquire)
    }
}

/// The node's budgets, shared by every pod.
#[derive(Debug)]
pub(crate) struct Budgets {
    pub limits: Limits,
    sockets: Budget,
    handshakes: Budget,
}

/// One pod's budgets.
#[derive(Debug)]
pub(crate) struct PodBudgets {
    inbound: Budget,
    outbound: Budget,
    handshakes: Budget,
    /// When the last refusal was logged (ms since `epoch`), so that a flood logs one
    /// line every [`LOG_EVERY`], not one per connection.
    logged: AtomicU64,
    epoch: Instant,
}

/// A connection's slots: its pod's, and the node's socket for the accepted connection (or,
/// for an HBONE tunnel, for its socket to the app).
#[derive(Debug)]
pub(crate) struct ConnSlot {
    _pod: Slot,
    _node: Slot,
}

/// A handshake's slots; dropped once the HTTP/2 connection is set up (or failed).
#[derive(Debug)]
pub(crate) struct HandshakeSlot {
    _pod: Slot,
    _node: Slot,
}

/// At most one log line per pod for refusals in this time (the metric counts each).
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Budgets {
    pub(crate) fn new(limits: Limits) -> Budgets {
        Budgets {
            limits,
            sockets: Budget::new(limits.max_sockets),
            handshakes: Budget::new(limits.max_handshakes),
        }
    }

    /// A new pod's budgets, of the sizes in [`Limits`].
    pub(crate) fn pod(&self) -> PodBudgets {
        PodBudgets {
            inbound: Budget::new(self.limits.max_connections_per_pod),
            outbound: Budget::new(self.limits.max_connections_per_pod),
            handshakes: Budget::new(self.limits.max_handshakes_per_pod),
            logged: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        }
    }

    /// Slots for a connection of `pod` in `direction`: the pod's budget first, so that a
    /// pod over its share is refused without touching the node's.
    pub(crate) fn connection(
        &self,
        pod: &PodBudgets,
        direction: Direction,
    ) -> Result<ConnSlot, Exhausted> {
        let budget = match direction {
            Direction::Inbound => &pod.inbound,
            Direction::Outbound => &pod.outbound,
        };
        let pod_slot = budget.take().ok_or(Exhausted::PodConnections)?;
        let node = self.socket()?;
        Ok(ConnSlot {
            _pod: pod_slot,
            _node: node,
        })
    }

    /// A socket of the node's budget, for a connection's plain upstream.
    pub(crate) fn socket(&self) -> Result<Slot, Exhausted> {
        self.sockets.take().ok_or(Exhausted::Sockets)
    }

    /// Slots for a TLS handshake on `pod`'s port 15008.
    pub(crate) fn handshake(&self, pod: &PodBudgets) -> Result<HandshakeSlot, Exhausted> {
        let pod_slot = pod.handshakes.take().ok_or(Exhausted::PodHandshakes)?;
        let node = self.handshakes.take().ok_or(Exhausted::Handshakes)?;
        Ok(HandshakeSlot {
            _pod: pod_slot,
            _node: node,
        })
    }

    /// Sockets and handshakes of every pod now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> (usize, usize) {
        (self.sockets.used(), self.handshakes.used())
    }
}

impl PodBudgets {
    /// Whether a refusal now should be logged: the first one, then at most one every
    /// [`LOG_EVERY`].
    pub(crate) fn should_log(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let every = LOG_EVERY.as_millis() as u64;
        self.logged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                (last == u64::MAX || now.saturating_sub(last) >= every).then_some(now)
            })
            .is_ok()
    }
}

/// Counts a refusal of `workload`'s connection with `remote` (the client inbound, the
/// destination outbound; its caller resets the connection or the stream) and logs it, at
/// most once per [`LOG_EVERY`] per pod.
pub(crate) fn report(
    metrics: &Metrics,
    workload: &Workload,
    budgets: &PodBudgets,
    direction: Direction,
    why: Exhausted,
    remote: SocketAddr,
) {
    metrics.refused(&RefusedLabels {
        direction: direction.as_str(),
        namespace: workload.namespace.clone(),
        pod: workload.name.clone(),
        reason: why.as_str(),
    });
    if budgets.should_log() {
        tracing::warn!(workload = %workload.key(), direction = direction.as_str(), %remote, reason = why.as_str(), "refused a connection: {why} (connections_refused_total counts each; this line is logged at most every {}s per pod)", LOG_EVERY.as_secs());
    } else {
        tracing::trace!(workload = %workload.key(), direction = direction.as_str(), %remote, reason = why.as_str(), "refused a connection: {why}");
    }
}

/// The default of `maxSockets`: the open-files limit `nofile` less `reserved` descriptors
/// for listeners, the HBONE pool's connections, the maps and the admin API. At least 1,024.
pub(crate) fn default_max_sockets(nofile: u64, reserved: u64) -> usize {
    let usable = nofile.saturating_sub(reserved);
    usize::try_from(usable).unwrap_or(usize::MAX).max(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_pod: usize, global: usize) -> Limits {
        Limits {
            max_sockets: global,
            max_connections_per_pod: per_pod,
            max_handshakes: global,
            max_handshakes_per_pod: per_pod,
        }
    }

    /// A pod at its limit is refused for its own budget, in that direction only; another
    /// pod still gets slots until the node's budget is full; slots come back when dropped.
    #[test]
    fn a_pod_at_its_limit_does_not_take_the_others_share() {
        let budgets = Budgets::new(limits(3, 5));
        let (a, b) = (budgets.pod(), budgets.pod());
        let held: Vec<ConnSlot> = (0..3)
            .map(|_| budgets.connection(&a, Direction::Inbound).unwrap())
            .collect();
        assert_eq!(
            budgets.connection(&a, Direction::Inbound).unwrap_err(),
            Exhausted::PodConnections
        );
        let out = budgets.connection(&a, Direction::Outbound).unwrap();
        let b1 = budgets.connection(&b, Direction::Inbound).unwrap();
        assert_eq!(budgets.used(), (5, 0));
        assert_eq!(
            budgets.connection(&b, Direction::Inbound).unwrap_err(),
            Exhausted::Sockets
        );
        // The refused attempt gave its pod slot back.
        assert_eq!(b.inbound.used(), 1);
        drop(held);
        assert_eq!(budgets.used(), (2, 0));
        let again: Vec<ConnSlot> = (0..2)
            .map(|_| budgets.connection(&b, Direction::Inbound).unwrap())
            .collect();
        assert_eq!(budgets.used(), (4, 0));
        // A plain upstream takes one more socket.
        let upstream = budgets.socket().unwrap();
        assert_eq!(budgets.socket().unwrap_err(), Exhausted::Sockets);
        assert_eq!(
            budgets.connection(&b, Direction::Outbound).unwrap_err(),
            Exhausted::Sockets
        );
        drop((out, b1, again, upstream));
        assert_eq!(budgets.used(), (0, 0));
    }

    #[test]
    fn handshakes_have_their_own_budgets() {
        let budgets = Budgets::new(Limits {
            max_sockets: 100,
            max_connections_per_pod: 100,
            max_handshakes: 3,
            max_handshakes_per_pod: 2,
        });
        let (a, b) = (budgets.pod(), budgets.pod());
        let h = [
            budgets.handshake(&a).unwrap(),
            budgets.handshake(&a).unwrap(),
        ];
        assert_eq!(budgets.handshake(&a).unwrap_err(), Exhausted::PodHandshakes);
        let hb = budgets.handshake(&b).unwrap();
        assert_eq!(budgets.handshake(&b).unwrap_err(), Exhausted::Handshakes);
        assert_eq!(budgets.used(), (0, 3));
        drop((h, hb));
        assert_eq!(budgets.used(), (0, 0));
        assert_eq!(Exhausted::PodHandshakes.as_str(), "pod_handshakes");
    }

    #[test]
    fn refusals_are_logged_once_per_interval() {
        let budgets = Budgets::new(limits(1, 1));
        let pod = budgets.pod();
        assert!(pod.should_log());
        assert!(!pod.should_log());
        assert!(!pod.should_log());
    }

    #[test]
    fn the_default_socket_budget_follows_the_open_files_limit() {
        assert_eq!(default_max_sockets(1_048_576, 4608), 1_043_968);
        assert_eq!(default_max_sockets(20_000, 4608), 15_392);
        assert_eq!(default_max_sockets(2048, 4608), 1024);
    }
}
