//! Working inside a pod's network namespace without moving the agent there.
//!
//! A socket belongs for life to the network namespace its creator was in when it called
//! `socket(2)`. So to listen or connect "from inside" a pod (like ztunnel's in-pod mode),
//! the calling thread enters the pod's namespace (`setns`), creates the socket and returns to
//! the agent's own namespace at once; the tokio runtime then uses the socket like any other.
//! Nothing else runs on the thread in between, and no thread is kept per pod: a new
//! connection costs two `setns` calls instead of a hand-off to another thread and back.

use std::{
    fs::File,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
pub(crate) enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("cannot open the agent's own network namespace: {0}")]
    Home(std::io::Error),
    #[error("socket in network namespace {path}: {source}")]
    Socket {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A pod's network namespace, held open.
#[derive(Debug)]
pub(crate) struct Netns {
    path: PathBuf,
    file: File,
    cookie: u64,
}

/// The namespace the agent runs in, where every thread returns after a socket is made.
fn home() -> Result<&'static File, NetnsError> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(f) = HOME.get() {
        return Ok(f);
    }
    // The thread group leader's namespace: the agent's, whatever this thread is doing.
    let f = File::open("/proc/self/ns/net").map_err(NetnsError::Home)?;
    Ok(HOME.get_or_init(|| f))
}

impl Netns {
    /// Opens `path` (e.g. `/run/netns/web-1`) and checks that it can be entered.
    pub(crate) fn open(path: &Path) -> Result<Netns, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut ns = Netns {
            path: path.to_owned(),
            file,
            cookie: 0,
        };
        let probe = ns.socket(Domain::IPV4, Type::DGRAM, None)?;
        ns.cookie =
            socket_netns_cookie(&OwnedFd::from(probe)).map_err(|source| NetnsError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(ns)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The kernel's cookie for this namespace (what `bpf_get_netns_cookie` returns).
    pub(crate) fn cookie(&self) -> u64 {
        self.cookie
    }

    /// A new socket in this namespace (close-on-exec).
    pub(crate) fn socket(
        &self,
        domain: Domain,
        ty: Type,
        protocol: Option<Protocol>,
    ) -> Result<Socket, NetnsError> {
        self.enter(|| Socket::new(domain, ty, protocol))?
            .map_err(|source| NetnsError::Socket {
                path: self.path.clone(),
                source,
            })
    }

    /// Runs `f` with the calling thread inside this namespace, then returns the thread to
    /// the agent's own. `f` must be short and must not block or await: nothing else runs on
    /// the thread in between. What `f` opens there that is bound to a namespace (a socket,
    /// a file under `/proc/sys/net`) stays in this one.
    pub(crate) fn enter<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let home = home()?;
        nix::sched::setns(&self.file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
            NetnsError::Enter {
                path: self.path.clone(),
                source,
            }
        })?;
        let out = f();
        if let Err(e) = nix::sched::setns(home, nix::sched::CloneFlags::CLONE_NEWNET) {
            // A worker thread left in a pod's namespace would make every later socket of
            // the agent there: not something to run on with. (Returning to the namespace
            // the thread came from fails only when the kernel is out of memory.)
            tracing::error!(netns = %self.path.display(), error = %e, "cannot return to the agent's network namespace; aborting");
            std::process::abort();
        }
        Ok(out)
    }
}

/// `SO_NETNS_COOKIE` of a socket (kernel 5.14+).
pub(crate) fn socket_netns_cookie(fd: &OwnedFd) -> std::io::Result<u64> {
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

    /// The network namespace cookie of the calling thread's namespace.
    fn current_cookie() -> std::io::Result<u64> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
        socket_netns_cookie(&OwnedFd::from(sock))
    }

    #[test]
    fn sockets_are_made_in_the_namespace_and_the_thread_comes_back() {
        // The agent's own namespace: always there, and the cookie must match ours.
        let before = current_cookie().unwrap();
        let ns = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(ns.cookie(), before);
        let s = ns.socket(Domain::IPV4, Type::STREAM, None).unwrap();
        assert_eq!(socket_netns_cookie(&OwnedFd::from(s)).unwrap(), before);
        assert_eq!(current_cookie().unwrap(), before, "back home");
        assert!(Netns::open(Path::new("/nonexistent")).is_err());
    }

    /// A socket made through `Netns` lands in that (fresh) namespace, not the agent's, and
    /// the calling thread is back home afterwards. Needs root (CAP_SYS_ADMIN for unshare):
    /// the suite runs as root, so without it the test fails rather than pass unchecked.
    #[test]
    fn a_new_namespace_gets_its_own_sockets() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test creates a network namespace and must run as root (the suite does: \
             `sudo cargo test` or `cargo xtask test`)"
        );
        let home_cookie = current_cookie().unwrap();
        // A scratch thread moves into a fresh namespace and stays there until told to end.
        let (path_tx, path_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let tid = nix::unistd::gettid();
            path_tx
                .send(PathBuf::from(format!("/proc/self/task/{tid}/ns/net")))
                .unwrap();
            let _ = done_rx.recv();
        });
        let ns = Netns::open(&path_rx.recv().unwrap()).unwrap();
        assert_ne!(ns.cookie(), home_cookie);
        let s = ns.socket(Domain::IPV4, Type::STREAM, None).unwrap();
        assert_eq!(socket_netns_cookie(&OwnedFd::from(s)).unwrap(), ns.cookie());
        assert_eq!(current_cookie().unwrap(), home_cookie, "back home");
        drop(done_tx);
        t.join().unwrap();
    }
}
