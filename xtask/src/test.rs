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

/// Clippy, build, the fuzz targets' quick mode, all tests (root), then a check that the
/// tests left nothing behind.
pub fn run(skip_clippy: bool, skip_fuzz: bool, cargo_args: &[String]) -> anyhow::Result<()> {
    if !skip_clippy {
        exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    }
    build()?;
    if !skip_fuzz {
        crate::fuzz::quick()?;
    }

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
    let mut leaked = new_leftovers(&before, meshd_tests::leftovers(""));
    if !leaked.is_empty() {
        // The kernel frees some objects asynchronously (a BPF link whose pin was removed,
        // the programs of a removed cgroup): give what is on its way out a few seconds.
        meshd_tests::wait_until(std::time::Duration::from_secs(10), || {
            leaked = new_leftovers(&before, meshd_tests::leftovers(""));
            leaked.is_empty()
        });
    }
    // Printed whatever the outcome, so that a failing run shows its leaks too.
    if leaked.is_empty() {
        println!("ok: nothing left behind");
    } else {
        println!(
            "the tests left these behind (remove them with `ip netns del`, `rmdir`, `rm -r`, `kill`, `bpftool`):\n  {}",
            leaked.join("\n  ")
        );
    }
    let summary = totals.summary();
    println!("{summary}");
    let problems = problems(result.err(), &totals, &leaked);
    if !problems.is_empty() {
        bail!("{}\n({summary})", problems.join("\n"));
    }
    Ok(())
}

/// The entries of `after` that were not already present before the run.
fn new_leftovers(before: &BTreeSet<String>, after: Vec<String>) -> Vec<String> {
    after.into_iter().filter(|l| !before.contains(l)).collect()
}

/// Everything that makes the run fail: the test command's error, no test run, an ignored
/// test (no test may be ignored: it would pass unnoticed), leftovers.
fn problems(test_error: Option<anyhow::Error>, totals: &Totals, leaked: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(e) = test_error {
        out.push(format!("{e:#}"));
    }
    if totals.passed == 0 {
        out.push("no test ran".to_string());
    }
    if totals.ignored > 0 {
        out.push(format!(
            "{} test(s) ignored: no test may be ignored (remove the #[ignore])",
            totals.ignored
        ));
    }
    if !leaked.is_empty() {
        out.push(format!(
            "the tests left {} thing(s) behind (listed above)",
            leaked.len()
        ));
    }
    out
}

/// Test counts summed over all `test result:` lines of `cargo test`.
#[derive(Default, Debug, PartialEq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
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
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }

    fn summary(&self) -> String {
        format!(
            "tests: {} passed, {} failed, {} ignored",
            self.passed, self.failed, self.ignored
        )
    }
}

/// Copies `input` to `out` line by line, counting test results. A line that is not UTF-8
/// is passed on with its bad bytes replaced: the reader never stops before the end, so
/// the child never blocks on a full pipe.
fn copy_counting(
    mut input: impl BufRead,
    out: &mut impl Write,
    totals: &mut Totals,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        totals.add_line(line);
        // Output errors (a closed terminal) must not stop the reading either.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
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
    let copied = match child.stdout.take() {
        Some(out) => copy_counting(BufReader::new(out), &mut std::io::stdout(), totals),
        None => Ok(()),
    };
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{desc}`"))?;
    copied.with_context(|| format!("reading the output of `{desc}`"))?;
    if !status.success() {
        bail!("`{desc}` failed ({status}); {}", totals.summary());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_libtest_lines() {
        let mut t = Totals::default();
        t.add_line("test result: ok. 6 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.43s");
        t.add_line(
            "test result: FAILED. 5 passed; 1 failed; 2 ignored; 0 measured; 3 filtered out",
        );
        t.add_line("running 3 tests");
        t.add_line("test foo ... ignored");
        assert_eq!(
            t,
            Totals {
                passed: 11,
                failed: 1,
                ignored: 2
            }
        );
    }

    /// A non-UTF-8 line is passed on (lossily) and the lines after it are still read and
    /// counted.
    #[test]
    fn a_non_utf8_line_does_not_stop_the_reader() {
        let mut input: Vec<u8> = b"running 2 tests\n".to_vec();
        input.extend_from_slice(b"bad \xff\xfe bytes\n");
        input.extend_from_slice(b"test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured\n");
        input.extend_from_slice(b"no newline at the end");
        let mut out = Vec::new();
        let mut t = Totals::default();
        copy_counting(&input[..], &mut out, &mut t).unwrap();
        assert_eq!(
            t,
            Totals {
                passed: 2,
                failed: 0,
                ignored: 1
            }
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "running 2 tests\nbad \u{fffd}\u{fffd} bytes\ntest result: ok. 2 passed; 0 failed; 1 ignored; 0 measured\nno newline at the end\n"
        );
    }

    /// An ignored test, a failed run and leftovers each fail the run; all are reported
    /// together.
    #[test]
    fn ignored_tests_failures_and_leaks_all_fail_the_run() {
        let ok = Totals {
            passed: 3,
            ..Totals::default()
        };
        assert!(problems(None, &ok, &[]).is_empty());
        let ignored = Totals {
            passed: 3,
            ignored: 1,
            ..Totals::default()
        };
        let p = problems(None, &ignored, &[]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("1 test(s) ignored"), "{p:?}");
        assert_eq!(problems(None, &Totals::default(), &[]), ["no test ran"]);
        let p = problems(
            Some(anyhow::anyhow!("`cargo test` failed")),
            &ok,
            &["netns mt1234-n1".to_string()],
        );
        assert_eq!(
            p,
            [
                "`cargo test` failed",
                "the tests left 1 thing(s) behind (listed above)"
            ]
        );
    }

    /// Only what appeared during the run counts; what was there before is exempt entry by
    /// entry (a new pin inside a pre-existing directory is a separate, new entry).
    #[test]
    fn only_new_entries_are_leaks() {
        let before: BTreeSet<String> = ["bpffs /sys/fs/bpf/meshd", "bpffs /sys/fs/bpf/meshd/a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let after = vec![
            "bpffs /sys/fs/bpf/meshd".to_string(),
            "bpffs /sys/fs/bpf/meshd/a".to_string(),
            "bpffs /sys/fs/bpf/meshd/b".to_string(),
        ];
        assert_eq!(new_leftovers(&before, after), ["bpffs /sys/fs/bpf/meshd/b"]);
    }
}
