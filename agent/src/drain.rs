//! Draining on shutdown: one [`DrainTrigger`], held by the wiring in [`crate::app`], and
//! [`DrainWatcher`]s, held by the accept loops. When the trigger starts the drain, the
//! accept loops stop accepting and the connections already open go on; the trigger then
//! waits until they have all ended, up to a deadline, and closes what is left.
//!
//! Every connection task is spawned through [`DrainWatcher::spawn`], which counts it and
//! keeps a handle to abort it: that is how the open connections are known, without a cost
//! per read (nothing is polled beside the connection itself). A task that can end politely
//! (the HBONE server, which sends a GOAWAY) is given a [`Draining`] signal by
//! [`DrainWatcher::spawn_graceful`]. At the deadline, the connections are first cancelled
//! the way the caller gives (the agent cancels them through its connection registry, so
//! that each relay resets both of its sides and closes its record); the tasks still open
//! a moment later are aborted.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    sync::{oneshot, watch, Notify},
    task::AbortHandle,
};

/// Where the drain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepting and serving.
    Serving,
    /// Not accepting; the open connections go on.
    Draining,
    /// The deadline passed: open connections were closed, new ones are not started.
    Closed,
}

/// One connection task: how to close it, and how to tell it the drain started.
struct Task {
    abort: Option<AbortHandle>,
    draining: Option<oneshot::Sender<()>>,
}

struct Tasks {
    phase: Phase,
    next: u64,
    open: HashMap<u64, Task>,
}

struct Shared {
    /// The phase for the accept loops (changed only with `tasks` locked).
    phase: watch::Sender<Phase>,
    tasks: Mutex<Tasks>,
    /// Notified when the last connection task ends.
    idle: Notify,
}

impl Shared {
    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new drain: the trigger for the shutdown, the watcher for the accept loops.
pub(crate) fn channel() -> (DrainTrigger, DrainWatcher) {
    let shared = Arc::new(Shared {
        phase: watch::Sender::new(Phase::Serving),
        tasks: Mutex::new(Tasks {
            phase: Phase::Serving,
            next: 0,
            open: HashMap::new(),
        }),
        idle: Notify::new(),
    });
    (DrainTrigger(shared.clone()), DrainWatcher(shared))
}

/// Starts the drain and closes what it leaves.
pub(crate) struct DrainTrigger(Arc<Shared>);

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainOutcome {
    /// Every connection ended by itself.
    Drained,
    /// The deadline passed (or the wait was cut short): this many were closed.
    Closed { connections: usize },
}

impl DrainTrigger {
    /// Stops the accept loops and tells graceful tasks to wind down; returns how many
    /// connection tasks are open.
    pub(crate) fn start(&self) -> usize {
        let mut tasks = self.0.tasks();
        if tasks.phase == Phase::Serving {
            tasks.phase = Phase::Draining;
            self.0.phase.send_replace(Phase::Draining);
            for task in tasks.open.values_mut() {
                if let Some(tx) = task.draining.take() {
                    let _ = tx.send(());
                }
            }
        }
        tasks.open.len()
    }

    /// How many connection tasks are open.
    pub(crate) fn open(&self) -> usize {
        self.0.tasks().open.len()
    }

    /// Resolves once no connection task is open.
    pub(crate) async fn idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so that a task ending in between is not missed.
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Starts the drain (if not yet), waits until the open connections have ended, at
    /// most `deadline` or until `cut_short` resolves, then closes those left: it refuses
    /// new ones, calls `cancel` (which closes connections and returns how many) and waits
    /// at most `close_wait` for the tasks to end; it aborts those still open, waiting at
    /// most `close_wait` again for them to be gone.
    pub(crate) async fn drain(
        &self,
        deadline: Duration,
        cut_short: impl Future<Output = ()>,
        cancel: impl FnOnce() -> usize,
        close_wait: Duration,
    ) -> DrainOutcome {
        self.start();
        tokio::select! {
            // Ended by themselves, even with a deadline of zero.
            biased;
            () = self.idle() => return DrainOutcome::Drained,
            () = tokio::time::sleep(deadline) => {}
            () = cut_short => {}
        }
        let connections = self.refuse_new();
        if cancel() > 0 && tokio::time::timeout(close_wait, self.idle()).await.is_ok() {
            return DrainOutcome::Closed { connections };
        }
        self.abort();
        if tokio::time::timeout(close_wait, self.idle()).await.is_err() {
            tracing::warn!(
                open = self.open(),
                "connection tasks still running {close_wait:?} after being closed"
            );
        }
        DrainOutcome::Closed { connections }
    }

    /// Refuses new connection tasks from now on; returns how many are open.
    fn refuse_new(&self) -> usize {
        let mut tasks = self.0.tasks();
        tasks.phase = Phase::Closed;
        self.0.phase.send_replace(Phase::Closed);
        tasks.open.len()
    }

    /// Aborts every open connection task: its sockets close when it is dropped.
    fn abort(&self) {
        for task in self.0.tasks().open.values() {
            if let Some(abort) = &task.abort {
                abort.abort();
            }
        }
    }
}

/// What accept loops and connection tasks hold: whether the drain started, and the spawn
/// of connection tasks that the drain counts and closes.
#[derive(Clone)]
pub(crate) struct DrainWatcher(Arc<Shared>);

impl DrainWatcher {
    /// Resolves once the drain has started (at once if it has).
    pub(crate) async fn signaled(&self) {
        let mut phase = self.0.phase.subscribe();
        // The sender lives in `Shared`, which `self` holds: this cannot fail.
        let _ = phase.wait_for(|p| *p != Phase::Serving).await;
    }

    /// Spawns a connection task that the drain waits for and, at the deadline, closes.
    /// After the deadline the task is not started (the future is dropped).
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_task(false, |_| task);
    }

    /// [`Self::spawn`] for a task that winds down by itself when the drain starts: it is
    /// given the [`Draining`] signal.
    pub(crate) fn spawn_graceful<F>(&self, task: impl FnOnce(Draining) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_task(true, task);
    }

    fn spawn_task<F>(&self, graceful: bool, task: impl FnOnce(Draining) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (id, draining) = {
            let mut tasks = self.0.tasks();
            if tasks.phase == Phase::Closed {
                return;
            }
            let id = tasks.next;
            tasks.next += 1;
            let (tx, rx) = if graceful {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let tx = match (tasks.phase, tx) {
                // Draining already: told at once.
                (Phase::Draining, Some(tx)) => {
                    let _ = tx.send(());
                    None
                }
                (_, tx) => tx,
            };
            tasks.open.insert(
                id,
                Task {
                    abort: None,
                    draining: tx,
                },
            );
            (id, Draining(rx))
        };
        let guard = Counted {
            id,
            shared: self.0.clone(),
        };
        let handle = tokio::spawn(Tracked {
            task: task(draining),
            _guard: guard,
        });
        let mut tasks = self.0.tasks();
        // Not there when it has ended already.
        if let Some(t) = tasks.open.get_mut(&id) {
            t.abort = Some(handle.abort_handle());
        }
        // Closed while it was being spawned.
        if tasks.phase == Phase::Closed {
            handle.abort();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection task with its [`Counted`] guard, dropped with it. A struct, not an
    /// `async` block awaiting the task: such a block keeps the moved task's space twice in
    /// its state (the captured value and the awaited one), which doubled every connection
    /// task's memory.
    struct Tracked<F> {
        #[pin]
        task: F,
        _guard: Counted,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().task.poll(cx)
    }
}

/// Held by a connection task while it runs: it leaves the count when the task ends or is
/// aborted.
struct Counted {
    id: u64,
    shared: Arc<Shared>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut tasks = self.shared.tasks();
        tasks.open.remove(&self.id);
        if tasks.open.is_empty() {
            drop(tasks);
            self.shared.idle.notify_waiters();
        }
    }
}

/// Resolves once when the drain starts; never, for a task not spawned gracefully (or
/// once it has resolved). Cheap to poll with every wake-up of the task.
pub(crate) struct Draining(Option<oneshot::Receiver<()>>);

impl Future for Draining {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Pending;
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(Ok(())) => {
                self.0 = None;
                Poll::Ready(())
            }
            // The drain is gone without starting: nothing will come.
            Poll::Ready(Err(_)) => {
                self.0 = None;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    const LONG: Duration = Duration::from_secs(3600);
    const CLOSE_WAIT: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_open_tasks_also_those_started_while_draining() {
        let (trigger, watcher) = channel();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        watcher.spawn(async move {
            let _ = done_rx.await;
        });
        assert_eq!(trigger.open(), 1);
        assert_eq!(trigger.start(), 1);
        // Spawned during the drain (e.g. a tunnel on an open HBONE connection): counted.
        let (late_tx, late_rx) = oneshot::channel::<()>();
        watcher.spawn(async move {
            let _ = late_rx.await;
        });
        assert_eq!(trigger.open(), 2);
        let drain = trigger.drain(LONG, std::future::pending(), || 0, CLOSE_WAIT);
        tokio::pin!(drain);
        assert!(futures_poll(drain.as_mut()).await.is_none());
        let _ = done_tx.send(());
        let _ = late_tx.send(());
        assert_eq!(drain.await, DrainOutcome::Drained);
        assert_eq!(trigger.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn closes_what_is_left_at_the_deadline() {
        let (trigger, watcher) = channel();
        let dropped = spawn_never_ending(&watcher);
        let start = tokio::time::Instant::now();
        let outcome = trigger
            .drain(
                Duration::from_secs(2),
                std::future::pending(),
                || 0,
                CLOSE_WAIT,
            )
            .await;
        assert_eq!(outcome, DrainOutcome::Closed { connections: 1 });
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(dropped.load(Ordering::SeqCst), "the task was dropped");
        assert_eq!(trigger.open(), 0);
        // After the close, new tasks are not started.
        let started = Arc::new(AtomicBool::new(false));
        let s = started.clone();
        watcher.spawn(async move { s.store(true, Ordering::SeqCst) });
        tokio::task::yield_now().await;
        assert!(!started.load(Ordering::SeqCst));
        assert_eq!(trigger.open(), 0);
    }

    /// At the deadline the connections are cancelled first: a task that ends when told
    /// ends by itself (it is not aborted); one that does not is aborted after `close_wait`.
    #[tokio::test(start_paused = true)]
    async fn cancels_before_aborting() {
        let (trigger, watcher) = channel();
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        let ended = Arc::new(AtomicBool::new(false));
        let e = ended.clone();
        watcher.spawn(async move {
            let _ = cancel_rx.await;
            e.store(true, Ordering::SeqCst);
        });
        let start = tokio::time::Instant::now();
        let cancel = move || usize::from(cancel_tx.send(()).is_ok());
        let outcome = trigger
            .drain(
                Duration::from_secs(2),
                std::future::pending(),
                cancel,
                CLOSE_WAIT,
            )
            .await;
        assert_eq!(outcome, DrainOutcome::Closed { connections: 1 });
        assert!(ended.load(Ordering::SeqCst), "ended by itself, not aborted");
        assert_eq!(start.elapsed(), Duration::from_secs(2));

        // Cancelled, but it does not end: aborted once `close_wait` has passed.
        let (trigger, watcher) = channel();
        let dropped = spawn_never_ending(&watcher);
        let start = tokio::time::Instant::now();
        let outcome = trigger
            .drain(
                Duration::from_secs(2),
                std::future::pending(),
                || 1,
                CLOSE_WAIT,
            )
            .await;
        assert_eq!(outcome, DrainOutcome::Closed { connections: 1 });
        assert!(dropped.load(Ordering::SeqCst), "aborted");
        assert_eq!(start.elapsed(), Duration::from_secs(2) + CLOSE_WAIT);
        assert_eq!(trigger.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cut_short_skips_the_rest_of_the_wait() {
        let (trigger, watcher) = channel();
        watcher.spawn(std::future::pending());
        let start = tokio::time::Instant::now();
        let outcome = trigger
            .drain(
                LONG,
                tokio::time::sleep(Duration::from_secs(1)),
                || 0,
                CLOSE_WAIT,
            )
            .await;
        assert_eq!(outcome, DrainOutcome::Closed { connections: 1 });
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn accept_loops_and_graceful_tasks_are_told() {
        let (trigger, watcher) = channel();
        let w = watcher.clone();
        let accept_loop = tokio::spawn(async move { w.signaled().await });
        let (told_tx, told_rx) = oneshot::channel();
        watcher.spawn_graceful(|draining| async move {
            draining.await;
            let _ = told_tx.send(());
        });
        tokio::task::yield_now().await;
        assert!(!accept_loop.is_finished());
        trigger.start();
        accept_loop.await.expect("accept loop");
        told_rx.await.expect("told");
        // A graceful task started during the drain is told at once.
        let (told_tx, told_rx) = oneshot::channel();
        watcher.spawn_graceful(|draining| async move {
            draining.await;
            let _ = told_tx.send(());
        });
        told_rx.await.expect("told at once");
        assert_eq!(
            trigger
                .drain(LONG, std::future::pending(), || 0, CLOSE_WAIT)
                .await,
            DrainOutcome::Drained
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_task_drains_at_once() {
        let (trigger, _watcher) = channel();
        let start = tokio::time::Instant::now();
        let outcome = trigger
            .drain(LONG, std::future::pending(), || 0, CLOSE_WAIT)
            .await;
        assert_eq!(outcome, DrainOutcome::Drained);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    struct DropFlag(Arc<AtomicBool>);

    /// Spawns a task that never ends by itself; the flag says when it was dropped.
    fn spawn_never_ending(watcher: &DrainWatcher) -> Arc<AtomicBool> {
        let dropped = Arc::new(AtomicBool::new(false));
        let on_drop = DropFlag(dropped.clone());
        watcher.spawn(async move {
            let _on_drop = on_drop;
            std::future::pending::<()>().await;
        });
        dropped
    }

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// Polls `f` once: its output if it is ready.
    async fn futures_poll<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut f).poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }
}
