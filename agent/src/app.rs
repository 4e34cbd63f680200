//! Running the agent: the wiring from settings to identity, capture, the state store and
//! its sources, the enrollment reconciler, the proxy and the admin server, and the order in
//! which they stop: on SIGTERM or SIGINT no new state, then the drain (no new connections,
//! the open ones go on until they end or the drain deadline; a second signal cuts the wait
//! short), then the agent exits leaving the programs attached and pinned, so that the next
//! agent adopts them (as after a crash) and no pod runs unmeshed in between; with
//! `--uninstall-on-exit` ([`OnExit::Uninstall`]) it detaches them and removes the pins.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;

use crate::{
    admin, agent,
    drain::{self, DrainOutcome},
    sources, state,
};

/// How long connections cancelled at the drain deadline may take to end (then their tasks
/// are aborted), and aborted tasks to be gone.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The proxy's runtime: with one worker, everything on this thread (no work-stealing
/// scheduler, as linkerd2-proxy does with one core); otherwise that many worker threads
/// (default: one per CPU).
pub fn proxy_runtime(workers: Option<u16>) -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = workers.map_or(cpus, usize::from);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// Each proxied connection holds two sockets: raise the soft open-files limit to the hard
/// one, as proxies do.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-files limit"),
    }
}

/// What a stopping agent does with the capture once it has drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExit {
    /// Leave programs, links and maps pinned: the next agent adopts them. Meanwhile an
    /// enrolled pod's outbound connections are refused (redirected to a closed port).
    KeepCapture,
    /// Detach every program and remove every pin (`meshd run --uninstall-on-exit`).
    Uninstall,
}

pub async fn run(path: PathBuf, on_exit: OnExit) -> anyhow::Result<()> {
    raise_fd_limit();
    let store = state::StateStore::new();
    let (source, settings) = sources::file::FileSource::start(&path, &store)?;
    let admin_listener = admin::bind(settings.admin)
        .await
        .with_context(|| format!("cannot listen on admin address {}", settings.admin))?;
    let (drain, watcher) = drain::channel();
    let agent = Arc::new(agent::Agent::start(&settings, store.clone(), watcher)?);
    // The first state is applied before the agent reports ready; later ones as they come.
    let updates = store.subscribe();
    let (a, initial) = (agent.clone(), store.current());
    tokio::task::spawn_blocking(move || a.apply(&initial)).await?;
    let reconciler = tokio::spawn(agent.clone().reconcile(updates));
    let sweeper = tokio::spawn(agent.clone().sweep_orig_dst());
    let source = tokio::spawn(source.watch());
    let admin = Arc::new(admin::Admin::new(agent.clone(), settings.admin));
    tokio::spawn(admin::serve(admin, admin_listener));
    tracing::info!(node = %settings.node, admin = %settings.admin, config = %path.display(), "meshd running");
    if !settings.admin.ip().to_canonical().is_loopback() {
        tracing::warn!(admin = %settings.admin, "the admin API listens beyond loopback (adminAllowNonLoopback): it has no authentication");
    }

    let mut signals = Signals::new()?;
    signals.next().await;
    // No new state from here on (an apply in progress finishes before shutdown starts).
    source.abort();
    reconciler.abort();
    sweeper.abort();
    // The programs stay attached while draining: the pods' open connections are still
    // proxied; new ones find no listener and are refused.
    let open = drain.start();
    tracing::info!(connections = open, deadline = ?settings.drain_timeout, "draining: no new connections; waiting for the open ones (a second signal closes them at once)");
    // At the deadline, the open connections are cancelled through the registry: each
    // relay resets both of its sides and closes its record.
    let connections = agent.proxy.connections.clone();
    let cancel = move || connections.cancel_all();
    match drain
        .drain(settings.drain_timeout, signals.next(), cancel, CLOSE_WAIT)
        .await
    {
        DrainOutcome::Drained => tracing::info!("drained: every connection has ended"),
        DrainOutcome::Closed { connections } => {
            tracing::info!(connections, "drain over: closed the connections left")
        }
    }
    match on_exit {
        OnExit::Uninstall => {
            tracing::info!("shutting down: detaching programs and removing pins");
            tokio::task::spawn_blocking(move || agent.shutdown()).await?;
        }
        OnExit::KeepCapture => {
            tracing::info!(pins = %agent.pins_root(), "shutting down: the capture stays in place for the next agent (enrolled pods' connections are refused until it runs; `meshd uninstall` removes it)");
        }
    }
    Ok(())
}

/// SIGTERM and SIGINT, the signals that stop the agent.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    fn flavor(workers: Option<u16>) -> RuntimeFlavor {
        super::proxy_runtime(workers)
            .expect("runtime")
            .handle()
            .runtime_flavor()
    }

    #[test]
    fn one_worker_is_a_single_threaded_runtime() {
        assert_eq!(flavor(Some(1)), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(Some(2)), RuntimeFlavor::MultiThread);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = if cpus == 1 {
            RuntimeFlavor::CurrentThread
        } else {
            RuntimeFlavor::MultiThread
        };
        assert_eq!(flavor(None), default);
    }
}
