//! Working inside a pod's network namespace without moving the agent there.
//!
//! Each [`Netns`] owns one thread that entered the namespace (`setns`) once; sockets are
//! created on that thread and keep their namespace for life, so the agent's tokio runtime can
//! then use them like any other socket. This is how the agent listens and connects "from
//! inside" a pod, like ztunnel's in-pod mode.

use std::{
    fs::File,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::mpsc,
};

use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("network namespace thread for {path} is gone")]
    Gone { path: PathBuf },
    #[error("cannot spawn network namespace thread: {0}")]
    Spawn(std::io::Error),
}

type Job = Box<dyn FnOnce() + Send>;

/// A handle on a thread living in a network namespace. Dropping it ends the thread.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    cookie: u64,
}

impl Netns {
    /// Opens `path` (e.g. `/run/netns/web-1`) and starts the namespace thread.
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let owned = path.to_owned();
        std::thread::Builder::new()
            .name(format!("netns:{}", short_name(path)))
            .spawn(move || {
                if let Err(source) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                {
                    let _ = ready_tx.send(Err(NetnsError::Enter {
                        path: owned,
                        source,
                    }));
                    return;
                }
                drop(file);
                let _ = ready_tx.send(current_cookie().map_err(|e| NetnsError::Open {
                    path: owned,
                    source: e,
                }));
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .map_err(NetnsError::Spawn)?;
        let cookie = ready_rx.recv().map_err(|_| NetnsError::Gone {
            path: path.to_owned(),
        })??;
        Ok(Netns {
            path: path.to_owned(),
            jobs,
            cookie,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's cookie for this namespace (what `bpf_get_netns_cookie` returns).
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// Runs `f` on the namespace thread and waits for it without blocking the runtime.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| self.gone())?;
        rx.await.map_err(|_| self.gone())
    }

    /// Runs `f` on the namespace thread and blocks until it returns (for set-up code).
    pub fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| self.gone())?;
        rx.recv().map_err(|_| self.gone())
    }

    fn gone(&self) -> NetnsError {
        NetnsError::Gone {
            path: self.path.clone(),
        }
    }
}

fn short_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.chars().take(8).collect()
}

/// The network namespace cookie of the calling thread's namespace.
pub fn current_cookie() -> std::io::Result<u64> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket_netns_cookie(&OwnedFd::from(sock))
}

/// `SO_NETNS_COOKIE` of a socket (kernel 5.14+).
pub fn socket_netns_cookie(fd: &OwnedFd) -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: valid fd, and a u64-sized out buffer with its length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_in_the_namespace() {
        // The agent's own namespace: always there, and the cookie must match ours.
        let ns = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(ns.cookie(), current_cookie().unwrap());
        assert_eq!(ns.run(|| 7).await.unwrap(), 7);
        assert!(Netns::open(Path::new("/nonexistent")).is_err());
    }
}
