//! `cargo xtask bench`: builds the agent and the test app in release mode, runs
//! `meshd_tests::bench` (a cluster of namespaces, every mode side by side), prints the
//! table and writes the JSON to `<target>/bench/bench-<unix-time>.json` and
//! `<target>/bench/latest.json`. `--compare A.json B.json` prints two runs side by side.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use meshd_tests::bench::{self, Options, Report};

use crate::util::{cargo, exec, target_dir};

/// Flags of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// About a second per measurement, 10 pods, 500 and 1,000 connections.
    #[arg(long)]
    pub quick: bool,
    /// Do not run setup first.
    #[arg(long)]
    pub skip_setup: bool,
    /// Do not build; use $MESHD_BIN and $MESHD_TESTAPP (or the release binaries as they are).
    #[arg(long)]
    pub skip_build: bool,
    /// Comma-separated modes (default: all; direct always runs).
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Seconds per measurement (default 10, or 1 with --quick).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Extra pods enrolled for the memory measurement (default 100, or 10 with --quick).
    #[arg(long)]
    pub pods: Option<u64>,
    /// Worker threads per agent (default: half of the cores, at least 1, as the two
    /// simulated nodes share the machine; 0 leaves the agent's own default, one per core).
    #[arg(long)]
    pub agent_workers: Option<u16>,
    /// TCP congestion control in the run's namespaces, for the apps' and the agents'
    /// sockets (default: the machine's, `net.ipv4.tcp_congestion_control`).
    #[arg(long, value_name = "NAME")]
    pub congestion_control: Option<String>,
    /// Print the table of an earlier run (a JSON file written by this command), and exit.
    #[arg(long, value_name = "FILE.json")]
    pub show: Option<PathBuf>,
    /// Print two earlier runs side by side with the change in percent, and exit.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"])]
    pub compare: Option<Vec<PathBuf>>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.show {
        print!("{}", Report::load(file)?.table());
        return Ok(());
    }
    if let Some(files) = &args.compare {
        let a = Report::load(&files[0])?;
        let b = Report::load(&files[1])?;
        print!("{}", bench::compare(&a, &b));
        return Ok(());
    }
    meshd_tests::require_root()?;
    if !args.skip_setup {
        crate::setup::run()?;
    }
    let target = target_dir()?;
    if !args.skip_build {
        exec(cargo().args([
            "build",
            "--release",
            "-p",
            "meshd",
            "-p",
            "meshd-tests",
            "--bins",
        ]))?;
    }
    // The release binaries, unless the caller chose others.
    for (var, bin) in [("MESHD_BIN", "meshd"), ("MESHD_TESTAPP", "meshd-testapp")] {
        if std::env::var_os(var).is_none() {
            let p = target.join("release").join(bin);
            if !p.is_file() {
                anyhow::bail!("{} is missing: build it or set {var}", p.display());
            }
            // Single-threaded here: no other thread reads the environment.
            std::env::set_var(var, &p);
        }
    }
    let mut opts = if args.quick {
        Options::quick()
    } else {
        Options::full()
    };
    if !args.modes.is_empty() {
        opts.modes = args.modes.clone();
    }
    if let Some(d) = args.duration_secs {
        opts.duration_secs = d.max(1);
    }
    if let Some(p) = args.pods {
        opts.pods = p;
    }
    if let Some(w) = args.agent_workers {
        opts.agent_workers = (w > 0).then_some(w);
    }
    opts.congestion_control = args.congestion_control.clone();
    // As `cargo xtask test` does: a killed earlier run's clusters would share the machine.
    crate::util::remove_stale_clusters("bench");
    // Ctrl-C, SIGTERM and SIGHUP (the `termination` feature) all clean up.
    ctrlc::set_handler(|| {
        eprintln!(
            "\ninterrupted: removing the benchmark's namespaces, cgroups, pins and processes"
        );
        bench::cleanup_running();
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")?;

    let report = bench::run(&opts)?;
    println!();
    print!("{}", report.table());
    let dir = target.join("bench");
    let (file, latest) = write(&report, &dir)?;
    println!("\nwrote {} and {}", file.display(), latest.display());
    Ok(())
}

fn write(report: &Report, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = serde_json::to_string_pretty(&report.to_json())? + "\n";
    let file = dir.join(format!("bench-{}.json", report.unix_time));
    let latest = dir.join("latest.json");
    for p in [&file, &latest] {
        std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok((file, latest))
}
