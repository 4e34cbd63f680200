//! Running commands visibly, with clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// `prog arg1 arg2`, for printing.
pub fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Prints `==> <command>`, runs it with inherited stdio, and fails unless it succeeds.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let desc = describe(cmd);
    println!("==> {desc}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{desc}` (is it installed and on PATH?)"))?;
    if !status.success() {
        bail!("`{desc}` failed ({status})");
    }
    Ok(())
}

/// Runs a query command quietly; Some(stdout) if it succeeded, None if it failed or
/// could not start.
pub fn query(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints a step that needs nothing done.
pub fn ok(msg: &str) {
    println!("ok: {msg}");
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// `cargo` in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root());
    c
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`).
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        return Some(PathBuf::from(h).join("bin"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").join("bin"))
}

/// Makes tools installed with `cargo install` (bpf-linker) visible to child processes.
pub fn add_cargo_bin_to_path() {
    let Some(bin) = cargo_bin_dir() else { return };
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let mut parts = vec![bin];
    parts.extend(std::env::split_paths(&path));
    if let Ok(joined) = std::env::join_paths(parts) {
        // Single-threaded here: main() calls this first.
        std::env::set_var("PATH", joined);
    }
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The cargo target directory (honours CARGO_TARGET_DIR and config), from `cargo metadata`.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let dir = v["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// Removes the test clusters of killed earlier runs (whose process is gone), which would
/// otherwise share the machine with this run or fail its leak check; says what it removed.
pub fn remove_stale_clusters(who: &str) {
    match meshd_tests::cleanup_stale("") {
        Ok(cleaned) if !cleaned.is_empty() => {
            eprintln!("{who}: removed stale test clusters: {}", cleaned.join(" "))
        }
        Ok(_) => {}
        Err(e) => eprintln!("{who}: warning: removing stale test clusters: {e}"),
    }
}
