//! `cargo xtask build` and `cargo xtask test`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::util::{cargo, describe, exec, target_dir};

/// Builds every binary of the default members (the agent's build script compiles the eBPF
/// programs; the eBPF crate itself is not a default member and cannot build for the host).
pub fn build() -> anyhow::Result<()> {
    exec(cargo().args(["build", "--bins"]))
}

/// Clippy, build, all tests (root), then a check that the tests left nothing behind.
pub fn run(skip_clippy: bool, cargo_args: &[String]) -> anyhow::Result<()> {
    if !skip_clippy {
        exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    build()?;

    let target = target_dir()?;
    let meshd = target.join("debug").join("meshd");
    let testapp = target.join("debug").join("meshd-testapp");
    for b in [&meshd, &testapp] {
        if !b.is_file() {
            bail!("{} was not built", b.display());
        }
    }
    let threads = std::env::var("MESHD_TEST_THREADS").unwrap_or_else(|_| "1".to_string());
    threads
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| {
            format!("MESHD_TEST_THREADS must be a positive number, not {threads:?}")
        })?;

    // Leftovers of killed earlier runs would fail the final check: remove them first.
    crate::util::remove_stale_clusters("test");
    let before: BTreeSet<String> = meshd_tests::leftovers("").into_iter().collect();
    if !before.is_empty() {
        println!("warning: present before the tests (not counted against them):");
        for l in &before {
            println!("  {l}");
        }
    }

    let mut totals = Totals::default();
    let result = exec_counting(
        cargo()
            .env("MESHD_BIN", &meshd)
            .env("MESHD_TESTAPP", &testapp)
            .args(["test", "--no-fail-fast"])
            .args(cargo_args)
            .args(["--", &format!("--test-threads={threads}")]),
        &mut totals,
    );

    println!("==> checking that the tests left nothing behind");
    let leaked: Vec<String> = meshd_tests::leftovers("")
        .into_iter()
        .filter(|l| !before.contains(l))
        .collect();
    let summary = format!("tests: {} passed, {} failed", totals.passed, totals.failed);
    result?;
    if totals.passed == 0 {
        bail!("no test ran ({summary})");
    }
    if !leaked.is_empty() {
        bail!(
            "the tests left these behind (remove them with `ip netns del`, `rmdir`, `rm -r`, `kill`):\n  {}",
            leaked.join("\n  ")
        );
    }
    println!("ok: nothing left behind");
    println!("{summary}");
    Ok(())
}

/// Test counts summed over all `test result:` lines of `cargo test`.
#[derive(Default, Debug, PartialEq)]
struct Totals {
    passed: u64,
    failed: u64,
}

impl Totals {
    /// Adds the counts of a libtest line `test result: ok. 6 passed; 0 failed; ...`.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            if let [.., n, what] = words.as_slice() {
                let n: u64 = n.parse().unwrap_or(0);
                match *what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    _ => {}
                }
            }
        }
    }
}

/// Like [`exec`], but passes stdout through line by line while counting test results.
fn exec_counting(cmd: &mut Command, totals: &mut Totals) -> anyhow::Result<()> {
    let desc = describe(cmd);
    println!("==> {desc}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{desc}`"))?;
    if let Some(out) = child.stdout.take() {
        let mut stdout = std::io::stdout();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            totals.add_line(&line);
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{desc}`"))?;
    if !status.success() {
        bail!(
            "`{desc}` failed ({status}); {} passed, {} failed",
            totals.passed,
            totals.failed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn counts_libtest_lines() {
        let mut t = Totals::default();
        t.add_line("test result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.43s");
        t.add_line(
            "test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 11,
                failed: 1
            }
        );
    }
}
