//! The gate the outbound listeners of the pods one reconcile enrolls wait behind: they are
//! bound (the kernel queues the pod's connections in their backlog) but accept only once
//! every pod of the batch has its inbound listener in the capture maps.
//!
//! Why: after an agent restart every pod's capture is still attached, adopted from the
//! pins. A pod enrolled early in the batch would otherwise dial a pod enrolled later while
//! that pod's sk_lookup still has no listener for its address, which refuses the
//! connection (fail closed); the client then sees its accepted connection reset.

use tokio::sync::watch;

/// Opens the gate when told to, or when dropped (a reconcile that panicked).
pub(crate) struct GateOpener(watch::Sender<bool>);

/// What an accept loop waits on.
#[derive(Clone)]
pub(crate) struct AcceptGate(watch::Receiver<bool>);

/// A closed gate and what opens it.
pub(crate) fn closed() -> (GateOpener, AcceptGate) {
    let (tx, rx) = watch::channel(false);
    (GateOpener(tx), AcceptGate(rx))
}

impl GateOpener {
    pub(crate) fn open(self) {
        // Dropping opens it too (see `AcceptGate::opened`).
        let _ = self.0.send(true);
    }
}

impl AcceptGate {
    /// A gate that is open already.
    pub(crate) fn open() -> AcceptGate {
        let (_, rx) = watch::channel(true);
        AcceptGate(rx)
    }

    /// Returns once the gate is open or its opener is gone.
    pub(crate) async fn opened(mut self) {
        let _ = self.0.wait_for(|open| *open).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_until_opened() {
        let (opener, gate) = closed();
        let waiting = tokio::spawn(gate.clone().opened());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        opener.open();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("opened")
            .unwrap();
        // A loop that starts waiting after it opened does not wait.
        tokio::time::timeout(Duration::from_secs(1), gate.opened())
            .await
            .expect("already open");
    }

    #[tokio::test]
    async fn a_dropped_opener_opens_it() {
        let (opener, gate) = closed();
        drop(opener);
        tokio::time::timeout(Duration::from_secs(1), gate.opened())
            .await
            .expect("opened by the drop");
        tokio::time::timeout(Duration::from_secs(1), AcceptGate::open().opened())
            .await
            .expect("open gate");
    }
}
