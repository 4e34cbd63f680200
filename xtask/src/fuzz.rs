//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (libFuzzer, the nightly
//! toolchain), each from its committed seed corpus `fuzz/corpus/<target>/`; what they find
//! goes to `fuzz/artifacts/<target>/`, the corpus they grow to `fuzz/work/<target>/`
//! (neither committed). See docs/fuzzing.md.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::util::{exec, ok, which, workspace_root};

/// Every target (docs/fuzzing.md lists what each drives and checks).
pub const TARGETS: [&str; 14] = [
    "record_open",
    "record_inner",
    "tls_rx_sequence",
    "tls_tx_vectored",
    "post_handshake_msgs",
    "handshake_accept",
    "handshake_connect",
    "detect",
    "hbone_server",
    "http_hop_by_hop",
    "identity_parse",
    "cert_identity",
    "admin_query",
    "heads",
];

/// Seconds per target inside `cargo xtask test`.
pub const QUICK_SECONDS: u64 = 5;

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// One target (default: all, one after the other).
    target: Option<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    time: u64,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
    /// Rewrite the seed corpora (fuzz/corpus/) from the seed generator, then exit.
    #[arg(long)]
    seeds: bool,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// Where cargo-fuzz puts the targets.
fn bin_dir() -> PathBuf {
    fuzz_dir()
        .join("target")
        .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .join("release")
}

/// Installs cargo-fuzz if it is missing (part of `cargo xtask setup`).
pub fn setup() -> anyhow::Result<()> {
    if let Some(p) = which("cargo-fuzz") {
        ok(&format!("cargo-fuzz at {}", p.display()));
        return Ok(());
    }
    exec(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

fn build() -> anyhow::Result<()> {
    if which("cargo-fuzz").is_none() {
        bail!("cargo-fuzz is not installed: run `cargo xtask setup`");
    }
    exec(Command::new("cargo").current_dir(fuzz_dir()).args([
        "+nightly",
        "fuzz",
        "build",
        "-O",
        "--debug-assertions",
    ]))
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    if args.list {
        for t in TARGETS {
            println!("{t}");
        }
        return Ok(());
    }
    let targets: Vec<&str> = match &args.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("no fuzz target {t:?} (`cargo xtask fuzz --list`)"),
        None => TARGETS.to_vec(),
    };
    build()?;
    if args.seeds {
        return exec(&mut Command::new(bin_dir().join("seeds")));
    }
    run_targets(&targets, args.time)
}

/// The quick mode of `cargo xtask test`: every target for [`QUICK_SECONDS`].
pub fn quick() -> anyhow::Result<()> {
    build()?;
    run_targets(&TARGETS, QUICK_SECONDS)
}

fn run_targets(targets: &[&str], seconds: u64) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for t in targets {
        println!("==> fuzz {t} for {seconds} s");
        let (execs, result) = run_one(t, seconds)?;
        if let Err(e) = &result {
            println!("{t}: {e:#}");
            failed.push(*t);
        }
        rows.push((*t, execs, result.is_ok()));
    }
    println!("{:<22} {:>14}  result", "target", "executions");
    for (t, execs, good) in &rows {
        let result = if *good { "ok" } else { "FOUND A FAILURE" };
        println!("{t:<22} {execs:>14}  {result}");
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/<target>/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Runs one target; returns its executions and whether it found nothing.
fn run_one(target: &str, seconds: u64) -> anyhow::Result<(u64, anyhow::Result<()>)> {
    let dir = fuzz_dir();
    let work = dir.join("work").join(target);
    let artifacts = dir.join("artifacts").join(target);
    for d in [&work, &artifacts] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let out = Command::new(bin_dir().join(target))
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&work)
        .arg(dir.join("corpus").join(target))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running fuzz target {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    std::fs::write(
        dir.join("work").join(format!("{target}.log")),
        log.as_bytes(),
    )
    .context("writing the fuzz log")?;
    let execs = executions(&log);
    let result = if out.status.success() {
        Ok(())
    } else {
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(anyhow::anyhow!(
            "{} ({}):\n{}",
            out.status,
            Path::new("fuzz/work")
                .join(format!("{target}.log"))
                .display(),
            tail.join("\n")
        ))
    };
    Ok((execs, result))
}

/// libFuzzer's `stat::number_of_executed_units` (0 if absent).
fn executions(log: &str) -> u64 {
    log.lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_from_final_stats() {
        let log = "#123 DONE cov: 1\nstat::number_of_executed_units: 4567\nstat::peak_rss_mb: 40\n";
        assert_eq!(executions(log), 4567);
        assert_eq!(executions("crashed"), 0);
    }

    #[test]
    fn every_target_has_a_source_and_a_seed_corpus() {
        let dir = fuzz_dir();
        for t in TARGETS {
            let src = dir.join("fuzz_targets").join(format!("{t}.rs"));
            assert!(src.is_file(), "{}", src.display());
            let corpus = dir.join("corpus").join(t);
            let seeds = std::fs::read_dir(&corpus)
                .map(|d| d.count())
                .unwrap_or_default();
            assert!(seeds > 0, "no seeds in {}", corpus.display());
        }
    }
}
