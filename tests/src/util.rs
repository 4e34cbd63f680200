//! Small helpers: running commands with clear errors, root check, polling, bpffs.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::error::HarnessError;

/// Fails with a clear message unless running as root. Tests call this first, so that they
/// fail (never silently skip) when not root.
pub fn require_root() -> anyhow::Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(HarnessError::NotRoot { uid }.into());
    }
    Ok(())
}

/// Polls `cond` every 20 ms until it returns true (→ true) or `timeout` passes (→ false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Renders a command as `prog arg1 arg2` for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a short command to completion; errors name the command and carry its stderr.
pub(crate) fn run_checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let desc = describe(cmd);
    let out = cmd.output().map_err(|source| HarnessError::Spawn {
        cmd: desc.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(HarnessError::CommandFailed {
            cmd: desc,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(out)
}

/// Runs `ip ARGS...`.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<String> {
    let out = run_checked(Command::new("ip").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n NETNS ARGS...`.
pub(crate) fn ip_in(netns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Entries of /proc/mounts as (mount point, fs type), with octal escapes decoded.
pub(crate) fn mounts() -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            let mnt = f.next()?;
            let fstype = f.next()?;
            Some((unescape_mount(mnt), fstype.to_string()))
        })
        .collect())
}

fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The bpffs mount point used by meshd.
pub(crate) const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf unless a bpf filesystem is already mounted there.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    if mounts()?.iter().any(|(m, t)| m == BPFFS && t == "bpf") {
        return Ok(());
    }
    std::fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    nix::mount::mount(
        Some("bpf"),
        Path::new(BPFFS),
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mounting bpffs at {BPFFS}"))?;
    Ok(())
}

/// Waits up to `timeout` for a process we spawned to exit; Ok(None) if it did not.
pub(crate) fn poll_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Replaces a file the way editors and ConfigMap updates do: a new file renamed over it
/// (its temporary name ends in `.tmp`, which no config or policy reader takes).
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing the new file");
    std::fs::rename(&tmp, path).expect("renaming it over the old one");
}
