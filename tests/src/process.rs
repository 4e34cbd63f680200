//! Spawning processes inside a netns (and a cgroup), tracking and killing them.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cleanup::{netns_prefix, CLUSTER_ENV};
use crate::error::HarnessError;
use crate::util::{describe, poll_child};

/// Default timeout of the `run_in_*` functions.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a process should run.
pub(crate) struct Placement<'a> {
    pub netns: Option<&'a Path>,
    pub cgroup: Option<&'a Path>,
}

/// Prepares `cmd` to enter the netns and cgroup before exec, in its own process group.
/// Returns the files that must stay open until the spawn is done.
fn place(cmd: &mut Command, at: &Placement<'_>) -> anyhow::Result<(Option<File>, Option<File>)> {
    let ns = at
        .netns
        .map(|p| File::open(p).with_context(|| format!("opening netns {}", p.display())))
        .transpose()?;
    let cg = at
        .cgroup
        .map(|p| {
            let procs = p.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&procs)
                .with_context(|| format!("opening {}", procs.display()))
        })
        .transpose()?;
    // Tag the process (and, through inheritance, its children) with its cluster, so that
    // the leak check finds it wherever it runs.
    let prefix = at
        .netns
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .and_then(netns_prefix);
    if let Some(prefix) = prefix {
        cmd.env(CLUSTER_ENV, prefix);
    }
    let ns_fd: RawFd = ns.as_ref().map_or(-1, |f| f.as_raw_fd());
    let cg_fd: RawFd = cg.as_ref().map_or(-1, |f| f.as_raw_fd());
    cmd.process_group(0);
    // SAFETY: the closure only calls async-signal-safe functions (setns, write) on file
    // descriptors that stay open in the parent until spawn() returns, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if ns_fd >= 0 && libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if cg_fd >= 0 {
                let b = b"0";
                if libc::write(cg_fd, b.as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok((ns, cg))
}

/// SIGKILLs the process group `pgid` (our children lead their own group).
pub(crate) fn kill_group(pgid: u32) {
    if let Ok(p) = i32::try_from(pgid) {
        if p > 1 {
            let _ = kill(Pid::from_raw(-p), Signal::SIGKILL);
        }
    }
}

struct Inner {
    name: String,
    cmd: String,
    pid: u32,
    child: Mutex<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// A process started by the cluster. Cloning gives another handle to the same process.
/// The cluster kills it (its whole process group) on cleanup; dropping the handle does not.
#[derive(Clone)]
pub struct ProcHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcHandle")
            .field("name", &self.inner.name)
            .field("pid", &self.inner.pid)
            .field("cmd", &self.inner.cmd)
            .finish()
    }
}

impl ProcHandle {
    /// Spawns `cmd` with stdout/stderr going to `<log_dir>/<name>.out` / `.err`.
    pub(crate) fn spawn(
        mut cmd: Command,
        at: &Placement<'_>,
        log_dir: &Path,
        name: &str,
    ) -> anyhow::Result<ProcHandle> {
        let stdout = log_dir.join(format!("{name}.out"));
        let stderr = log_dir.join(format!("{name}.err"));
        let out =
            File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?;
        let err =
            File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let desc = describe(&cmd);
        let keep = place(&mut cmd, at)?;
        let child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            cmd: desc.clone(),
            source,
        })?;
        drop(keep);
        Ok(ProcHandle {
            inner: Arc::new(Inner {
                name: name.to_string(),
                cmd: desc,
                pid: child.id(),
                child: Mutex::new(child),
                stdout,
                stderr,
            }),
        })
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.inner.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The log name (`<name>.out` / `<name>.err` in the cluster's directory).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.inner.cmd
    }

    pub fn stdout_path(&self) -> &Path {
        &self.inner.stdout
    }

    pub fn stderr_path(&self) -> &Path {
        &self.inner.stderr
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.inner.stdout).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.inner.stderr).unwrap_or_default()
    }

    /// Sends a signal to the process (not its group).
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = i32::try_from(self.inner.pid).context("pid out of range")?;
        if self.try_wait()?.is_some() {
            anyhow::bail!("process {} ({}) has already exited", pid, self.inner.name);
        }
        kill(Pid::from_raw(pid), sig).with_context(|| format!("kill -{sig} {pid}"))?;
        Ok(())
    }

    /// Exit status if the process has exited.
    pub fn try_wait(&self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child().try_wait()?)
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit; Ok(None) if it is still running.
    pub fn wait_timeout(&self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        Ok(poll_child(&mut self.child(), timeout)?)
    }

    /// Waits for exit, failing with the command and its output tail after `timeout`.
    pub fn wait(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.wait_timeout(timeout)?.ok_or_else(|| {
            anyhow::Error::new(HarnessError::Timeout {
                what: format!(
                    "waiting for `{}` to exit{}",
                    self.inner.cmd,
                    self.output_tail()
                ),
                timeout,
            })
        })
    }

    /// SIGKILLs the process and its process group and reaps it.
    pub fn kill(&self) -> anyhow::Result<()> {
        let mut child = self.child();
        kill_group(self.inner.pid);
        if child.try_wait()?.is_none() {
            // Not reaped yet, so the pid is still ours even if it left its group.
            let _ = child.kill();
        }
        match poll_child(&mut child, Duration::from_secs(10))? {
            Some(_) => Ok(()),
            None => Err(HarnessError::Timeout {
                what: format!(
                    "process {} ({}) did not die after SIGKILL",
                    self.inner.pid, self.inner.cmd
                ),
                timeout: Duration::from_secs(10),
            }
            .into()),
        }
    }

    /// Waits until a line of stdout or stderr contains `pattern`, and returns that line.
    /// Fails early if the process exits without printing it.
    pub fn wait_for_output(&self, pattern: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_wait()?;
            for text in [self.stdout(), self.stderr()] {
                if let Some(l) = text.lines().find(|l| l.contains(pattern)) {
                    return Ok(l.to_string());
                }
            }
            if let Some(st) = exited {
                anyhow::bail!(
                    "`{}` exited ({st}) without printing {pattern:?}{}",
                    self.inner.cmd,
                    self.output_tail()
                );
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "waiting for {pattern:?} in the output of `{}`{}",
                        self.inner.cmd,
                        self.output_tail()
                    ),
                    timeout,
                }
                .into());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The last lines of stdout and stderr, for error messages.
    pub fn output_tail(&self) -> String {
        fn tail(s: &str) -> String {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n    ")
        }
        format!(
            "\n  stdout ({}):\n    {}\n  stderr ({}):\n    {}",
            self.inner.stdout.display(),
            tail(&self.stdout()),
            self.inner.stderr.display(),
            tail(&self.stderr())
        )
    }
}

/// Runs `cmd` to completion in the given placement, capturing its output; kills it (and
/// its process group) and fails with an error naming it after `timeout`.
pub(crate) fn run(
    mut cmd: Command,
    at: &Placement<'_>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = describe(&cmd);
    let keep = place(&mut cmd, at)?;
    let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
        cmd: desc.clone(),
        source,
    })?;
    drop(keep);
    let pid = child.id();
    let out_reader = child.stdout.take().map(reader_thread);
    let err_reader = child.stderr.take().map(reader_thread);
    let status = match poll_child(&mut child, timeout) {
        Ok(Some(st)) => st,
        Ok(None) | Err(_) => {
            kill_group(pid);
            let _ = poll_child(&mut child, Duration::from_secs(10));
            return Err(HarnessError::Timeout {
                what: format!("running `{desc}` (killed)"),
                timeout,
            }
            .into());
        }
    };
    // Children that the command left behind in its group would keep the pipes open.
    kill_group(pid);
    let stdout = out_reader.map(join_reader).unwrap_or_default();
    let stderr = err_reader.map(join_reader).unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn reader_thread<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn join_reader(h: std::thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    h.join().unwrap_or_default()
}
