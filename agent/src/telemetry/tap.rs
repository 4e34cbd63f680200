//! The live request stream behind `meshd tap`: every finished request is broadcast to the
//! current subscribers. A slow subscriber loses events (and is told how many); it never
//! slows the proxy down.

use std::sync::{
    atomic::{AtomicUsize, Ordering::Relaxed},
    Arc,
};

use tokio::sync::broadcast::{self, error::RecvError};

use super::events::RequestEvent;

const CAPACITY: usize = 4096;

pub(crate) struct Tap {
    tx: broadcast::Sender<Arc<RequestEvent>>,
    /// Open taps, counted here so that the proxy's check per request is one atomic load
    /// (the channel's own count takes its lock).
    watchers: Arc<AtomicUsize>,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            tx: broadcast::channel(CAPACITY).0,
            watchers: Arc::default(),
        }
    }
}

impl Tap {
    pub(crate) fn publish(&self, ev: Arc<RequestEvent>) {
        // No subscriber is not an error.
        let _ = self.tx.send(ev);
    }

    /// Whether anyone is tapping: a request's event is only made for a tap.
    pub(crate) fn is_watched(&self) -> bool {
        self.watchers.load(Relaxed) > 0
    }

    pub(crate) fn subscribe(&self) -> Watch {
        self.watchers.fetch_add(1, Relaxed);
        Watch {
            rx: self.tx.subscribe(),
            watchers: self.watchers.clone(),
        }
    }
}

/// One open tap: the events published from its start on, until it is dropped.
pub(crate) struct Watch {
    rx: broadcast::Receiver<Arc<RequestEvent>>,
    watchers: Arc<AtomicUsize>,
}

impl Watch {
    pub(crate) async fn recv(&mut self) -> Result<Arc<RequestEvent>, RecvError> {
        self.rx.recv().await
    }

    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Result<Arc<RequestEvent>, broadcast::error::TryRecvError> {
        self.rx.try_recv()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Relaxed);
    }
}

/// Which requests a tap wants.
#[derive(Debug, Default, Clone)]
pub(crate) struct TapFilter {
    /// `namespace/pod` or `namespace/deployment` of the workload the agent proxied for.
    pub workload: Option<String>,
    pub path_prefix: Option<String>,
    pub method: Option<String>,
    pub direction: Option<String>,
}

impl TapFilter {
    pub(crate) fn matches(&self, ev: &RequestEvent) -> bool {
        let workload = &ev.conn.workload;
        self.workload.as_deref().is_none_or(|w| {
            w == format!("{}/{}", workload.namespace, workload.name)
                || w == format!("{}/{}", workload.namespace, workload.deployment)
        }) && self
            .path_prefix
            .as_deref()
            .is_none_or(|p| ev.path.starts_with(p))
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(&ev.method))
            && self
                .direction
                .as_deref()
                .is_none_or(|d| d == ev.conn.direction.as_str())
    }
}
