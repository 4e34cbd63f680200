//! `cargo xtask <command>`: developer and CI tasks for meshd.

mod bench;
mod demo;
mod fuzz;
mod setup;
mod test;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "meshd developer and CI tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check the kernel and install what building and testing need (Debian 12, as root).
    /// Idempotent: skips whatever is already present.
    Setup,
    /// Setup, then build all binaries (the agent's build script compiles the eBPF programs).
    Build {
        /// Do not run setup first.
        #[arg(long)]
        skip_setup: bool,
    },
    /// Setup, clippy, build, then run all tests (as root) and check that nothing leaked.
    /// Test threads: env MESHD_TEST_THREADS (default 1).
    Test {
        /// Do not run setup first.
        #[arg(long)]
        skip_setup: bool,
        /// Do not run clippy first.
        #[arg(long)]
        skip_clippy: bool,
        /// Do not run the fuzz targets' quick mode (each for a few seconds).
        #[arg(long)]
        skip_fuzz: bool,
        /// Extra arguments for `cargo test` (e.g. `-p meshd-tests`), after `--`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Build the cargo-fuzz targets (nightly) and run them from their seed corpora: all,
    /// one after the other, or the one named; `--time SECONDS` per target.
    Fuzz(fuzz::FuzzArgs),
    /// Setup, build, then the demo: two nodes, curl to a real HTTP server through meshd with
    /// mutual TLS, a capture of the traffic between the nodes; removes everything afterwards.
    Demo(demo::DemoArgs),
    /// Setup, build in release, then measure direct, passthrough, mtls and mtls-http side by
    /// side in a cluster of namespaces; prints a table, writes target/bench/*.json.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    util::add_cargo_bin_to_path();
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Setup => setup::run(),
        Cmd::Build { skip_setup } => {
            if !skip_setup {
                setup::run()?;
            }
            test::build()
        }
        Cmd::Test {
            skip_setup,
            skip_clippy,
            skip_fuzz,
            cargo_args,
        } => {
            if !skip_setup {
                setup::run()?;
            }
            test::run(skip_clippy, skip_fuzz, &cargo_args)
        }
        Cmd::Fuzz(args) => fuzz::run(args),
        Cmd::Demo(args) => demo::run(args),
        Cmd::Bench(args) => bench::run(args),
    }
}
