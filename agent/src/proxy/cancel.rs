//! Closing one connection from outside it. The connection registry holds a [`CancelToken`]
//! for every open connection; the connection's relay or HTTP session waits on
//! [`Cancelled`] beside its I/O and, when it resolves, stops and closes both sides.
//!
//! A waiter is a one-shot channel of its own, so polling it with every wake-up of the relay
//! is a few atomic operations (no lock, nothing shared with other connections); the token's
//! lock is taken only to add a waiter and to cancel.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
};

use tokio::sync::oneshot;

#[derive(Default)]
struct State {
    cancelled: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

/// Cancels one connection; clones share the same state. Once cancelled, it stays cancelled.
#[derive(Clone, Default)]
pub(crate) struct CancelToken(Arc<Mutex<State>>);

impl CancelToken {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels: every waiter resolves, and so does every later one. Returns whether this
    /// call cancelled it (false if it was already).
    pub(crate) fn cancel(&self) -> bool {
        let mut state = self.state();
        if state.cancelled {
            return false;
        }
        state.cancelled = true;
        for waiter in state.waiters.drain(..) {
            let _ = waiter.send(());
        }
        true
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.state().cancelled
    }

    /// Resolves once the token is cancelled (at once if it is).
    pub(crate) fn cancelled(&self) -> Cancelled {
        let mut state = self.state();
        if state.cancelled {
            return Cancelled(Wait::Now);
        }
        let (tx, rx) = oneshot::channel();
        state.waiters.push(tx);
        Cancelled(Wait::For(rx))
    }
}

enum Wait {
    Now,
    For(oneshot::Receiver<()>),
    /// Every token is gone without cancelling: nothing will come.
    Never,
}

/// Resolves once its [`CancelToken`] is cancelled; never, if the token is dropped first.
pub(crate) struct Cancelled(Wait);

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Wait::Now => Poll::Ready(()),
            Wait::Never => Poll::Pending,
            Wait::For(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(())) => {
                    self.0 = Wait::Now;
                    Poll::Ready(())
                }
                Poll::Ready(Err(_)) => {
                    self.0 = Wait::Never;
                    Poll::Pending
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `f` once: whether it is ready.
    async fn ready<F: Future + Unpin>(f: &mut F) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_ready())).await
    }

    #[tokio::test]
    async fn waiters_before_and_after_the_cancel_resolve() {
        let token = CancelToken::default();
        let (mut a, mut b) = (token.cancelled(), token.clone().cancelled());
        assert!(!ready(&mut a).await && !ready(&mut b).await);
        assert!(!token.is_cancelled());
        assert!(token.clone().cancel(), "the first cancel");
        assert!(!token.cancel(), "already cancelled");
        assert!(token.is_cancelled());
        assert!(ready(&mut a).await && ready(&mut b).await);
        assert!(ready(&mut a).await, "stays resolved");
        let mut late = token.cancelled();
        assert!(ready(&mut late).await, "a waiter made after the cancel");
    }

    #[tokio::test]
    async fn a_dropped_token_never_resolves() {
        let token = CancelToken::default();
        let mut waiter = token.cancelled();
        drop(token);
        assert!(!ready(&mut waiter).await);
        assert!(!ready(&mut waiter).await);
    }
}
