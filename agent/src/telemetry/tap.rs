//! The live request stream behind `meshd tap`: every finished request is broadcast to the
//! current subscribers. A slow subscriber loses events (and is told how many); it never
//! slows the proxy down.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::RequestEvent;

const CAPACITY: usize = 4096;

pub struct Tap {
    tx: broadcast::Sender<Arc<RequestEvent>>,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Tap {
    pub fn publish(&self, ev: Arc<RequestEvent>) {
        // No subscriber is not an error.
        let _ = self.tx.send(ev);
    }

    /// Whether anyone is tapping: a request's event is only made for a tap.
    pub fn is_watched(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RequestEvent>> {
        self.tx.subscribe()
    }
}

/// Which requests a tap wants.
#[derive(Debug, Default, Clone)]
pub struct TapFilter {
    /// `namespace/pod` or `namespace/deployment` of the workload the agent proxied for.
    pub workload: Option<String>,
    pub path_prefix: Option<String>,
    pub method: Option<String>,
    pub direction: Option<String>,
}

impl TapFilter {
    pub fn matches(&self, ev: &RequestEvent) -> bool {
        self.workload.as_deref().is_none_or(|w| {
            w == format!("{}/{}", ev.namespace, ev.pod)
                || w == format!("{}/{}", ev.namespace, ev.deployment)
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
                .is_none_or(|d| d == ev.direction.as_str())
    }
}
