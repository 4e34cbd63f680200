//! The state store: the current [`State`] snapshot, which sources publish and consumers
//! (the enrollment reconciler, the proxy) read and watch, and each source's status for
//! `/config_dump`. Sources know only their [`SourceHandle`]; they never see a consumer.
//!
//! Reading is lock-free ([`StateStore::load`], once per connection); watching goes through
//! a `tokio::sync::watch` channel, so a consumer that falls behind sees the latest snapshot,
//! not every one. One source feeds the store at a time today (the file in standalone mode,
//! Kubernetes next); each publication replaces the whole state.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use arc_swap::{ArcSwap, Guard};
use serde::Serialize;
use tokio::sync::watch;

use super::State;

/// What a source last did, for `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SourceStatus {
    /// The kind of source, e.g. `file`.
    pub name: &'static str,
    /// Where it reads from, e.g. the file's path.
    pub location: String,
    /// When it last published a state (seconds since the epoch).
    pub last_applied: Option<u64>,
    /// The generation of that state.
    pub generation: Option<u64>,
    /// Its last error, cleared by its next good update.
    pub last_error: Option<String>,
    /// When that error is refused policy documents: the refusals.
    pub policy_error: Option<String>,
}

pub(crate) struct StateStore {
    current: ArcSwap<State>,
    updates: watch::Sender<Arc<State>>,
    /// Indexed by [`SourceHandle::index`]; the lock also orders publications.
    sources: Mutex<Vec<SourceStatus>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StateStore {
    /// An empty store: an empty state of generation 0, no sources.
    pub(crate) fn new() -> Arc<StateStore> {
        let empty = Arc::new(State::default());
        Arc::new(StateStore {
            current: ArcSwap::new(empty.clone()),
            updates: watch::Sender::new(empty),
            sources: Mutex::default(),
        })
    }

    /// The current snapshot, without taking a reference count (for the data path).
    pub(crate) fn load(&self) -> Guard<Arc<State>> {
        self.current.load()
    }

    /// The current snapshot.
    pub(crate) fn current(&self) -> Arc<State> {
        self.current.load_full()
    }

    /// Every snapshot published from now on (the current one is marked seen). The channel
    /// closes when the store is dropped.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        let mut rx = self.updates.subscribe();
        rx.mark_unchanged();
        rx
    }

    /// Registers a source; it publishes and reports through the handle.
    pub(crate) fn source(self: &Arc<Self>, name: &'static str, location: String) -> SourceHandle {
        let mut sources = lock(&self.sources);
        sources.push(SourceStatus {
            name,
            location,
            last_applied: None,
            generation: None,
            last_error: None,
            policy_error: None,
        });
        SourceHandle {
            store: self.clone(),
            index: sources.len() - 1,
        }
    }

    pub(crate) fn statuses(&self) -> Vec<SourceStatus> {
        lock(&self.sources).clone()
    }
}

/// A source's way into the store.
pub(crate) struct SourceHandle {
    store: Arc<StateStore>,
    index: usize,
}

impl SourceHandle {
    /// Makes `state` the current snapshot, tells the watchers, and clears this source's
    /// error. Returns the snapshot as published.
    pub(crate) fn publish(&self, mut state: State) -> Arc<State> {
        let mut sources = lock(&self.store.sources);
        state.generation = self.store.current.load().generation + 1;
        let state = Arc::new(state);
        self.store.current.store(state.clone());
        self.store.updates.send_replace(state.clone());
        if let Some(status) = sources.get_mut(self.index) {
            status.last_applied = Some(unix_now());
            status.generation = Some(state.generation);
            status.last_error = None;
            status.policy_error = None;
        }
        state
    }

    /// Records an error (the last good state keeps serving), with the refused policy
    /// documents when they are the cause. Returns whether it differs from the error
    /// recorded before, so that a source logs each error once.
    pub(crate) fn report_error(&self, message: String, policy: Option<String>) -> bool {
        let mut sources = lock(&self.store.sources);
        match sources.get_mut(self.index) {
            Some(status) if status.last_error.as_deref() != Some(&message) => {
                status.last_error = Some(message);
                status.policy_error = policy;
                true
            }
            _ => false,
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ServicePort, Workload};

    /// A source that is not the file: it publishes what a test gives it.
    struct TestSource(SourceHandle);

    impl TestSource {
        fn publish_workload(&self, name: &str, ip: &str) {
            let w = Workload {
                name: name.into(),
                namespace: "default".into(),
                service_account: "web".into(),
                node: "n2".into(),
                deployment: name.into(),
                labels: Default::default(),
                annotations: Default::default(),
                ports: Vec::new(),
                probes: Vec::new(),
                ips: vec![ip.parse().expect("ip")],
                opaque_ports: Default::default(),
                local: None,
            };
            let svc = ServicePort {
                name: "web".into(),
                namespace: "default".into(),
                vip: "10.96.0.1".parse().expect("vip"),
                port: 80,
                endpoints: vec![addr(ip, 8080)],
            };
            self.0.publish(State::new("n1", [w], [svc]));
        }
    }

    fn addr(ip: &str, port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::new(ip.parse().expect("ip"), port)
    }

    /// A second kind of source plugs in: what it publishes is what a watcher sees and what
    /// the data path reads, and its status (with its errors) is reported.
    #[tokio::test]
    async fn a_test_source_feeds_the_watchers() {
        let store = StateStore::new();
        let mut watcher = store.subscribe();
        let source = TestSource(store.source("test", "memory".into()));
        assert_eq!(store.statuses()[0].last_applied, None);

        source.publish_workload("web-1", "10.0.0.1");
        watcher.changed().await.expect("a snapshot");
        let seen = watcher.borrow_and_update().clone();
        assert_eq!(seen.generation(), 1);
        assert_eq!(
            seen.workload_by_ip(&"10.0.0.1".parse().expect("ip"))
                .map(|w| w.key()),
            Some("default/web-1".to_string())
        );
        let svc = store
            .load()
            .service(&"10.96.0.1:80".parse().expect("addr"))
            .cloned()
            .expect("the service");
        assert_eq!(svc.endpoints, vec![addr("10.0.0.1", 8080)]);

        assert!(source.0.report_error("bad update".into(), None));
        assert!(
            !source.0.report_error("bad update".into(), None),
            "reported once"
        );
        let status = &store.statuses()[0];
        assert_eq!((status.name, status.location.as_str()), ("test", "memory"));
        assert_eq!(status.last_error.as_deref(), Some("bad update"));
        assert_eq!(status.generation, Some(1));
        assert!(status.last_applied.is_some());
        // The error did not touch the state; the next good update clears it.
        assert_eq!(store.current().generation(), 1);
        source.publish_workload("web-2", "10.0.0.2");
        watcher.changed().await.expect("a second snapshot");
        assert!(watcher
            .borrow()
            .workload_by_ip(&"10.0.0.2".parse().expect("ip"))
            .is_some());
        assert_eq!(store.statuses()[0].last_error, None);
        assert_eq!(store.statuses()[0].generation, Some(2));
    }
}
