//! The compiled policy the proxy enforces, swapped as a whole when policy, workloads or
//! settings change (like the state store's snapshots): a connection asks once for its
//! port's policy and keeps the `Arc`; open connections watch [`PolicyStore::subscribe`] to
//! be re-checked when a new index is published.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::{compile, PolicyIndex, PolicySet, PolicySettings, PolicyWorkload, PortPolicy};

/// The current [`PolicyIndex`] and the settings it was compiled with.
pub struct PolicyStore {
    current: ArcSwap<Compiled>,
    generation: watch::Sender<u64>,
}

/// One published compilation.
pub struct Compiled {
    pub index: PolicyIndex,
    pub settings: PolicySettings,
}

impl Default for PolicyStore {
    fn default() -> Self {
        PolicyStore::new(PolicySettings::default())
    }
}

impl PolicyStore {
    /// A store with no workload compiled yet: every port gets `settings`' default policy.
    pub fn new(settings: PolicySettings) -> PolicyStore {
        PolicyStore {
            current: ArcSwap::from_pointee(Compiled {
                index: PolicyIndex::default(),
                settings,
            }),
            generation: watch::channel(0).0,
        }
    }

    /// The current compilation.
    pub fn load(&self) -> Arc<Compiled> {
        self.current.load_full()
    }

    /// Publishes a new compilation and wakes the connections that watch for one.
    pub fn publish(&self, index: PolicyIndex, settings: PolicySettings) {
        self.current.store(Arc::new(Compiled { index, settings }));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Changes each time a compilation is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// How many compilations were published: a cheap check of whether a policy an open
    /// connection holds may be stale.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }
}

impl Compiled {
    /// The policy of `port` on workload `namespace/name`. A workload the index does not
    /// know (not compiled yet) gets the default policy of the settings, exactly as a
    /// workload without Servers would.
    pub fn port(&self, namespace: &str, name: &str, port: u16) -> Arc<PortPolicy> {
        if let Some(p) = self.index.port(&format!("{namespace}/{name}"), port) {
            return p;
        }
        let workload = PolicyWorkload {
            namespace: namespace.to_string(),
            name: name.to_string(),
            ..Default::default()
        };
        let key = workload.key();
        compile(
            &PolicySet::default(),
            &[workload],
            &Default::default(),
            &self.settings,
        )
        .port(&key, port)
        // Not reached (a workload just compiled is in its index): nobody, not anybody.
        .unwrap_or_else(|| Arc::new(PortPolicy::deny_all()))
    }
}
