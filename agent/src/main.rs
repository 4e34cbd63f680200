//! meshd: the sidecar-less service mesh node agent, and its CLI.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use meshd::{app, capture, check, diagnostics, identity, logging, settings, views};

/// jemalloc, as ztunnel and most proxies use: less fragmentation than glibc's per-thread
/// arenas, and freed memory goes back to the kernel (a traffic burst does not leave the
/// agent's RSS at its high-water mark).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings (read at its start): a background thread returns dirty pages to the
/// kernel about a second after they are freed.
#[allow(non_upper_case_globals)]
#[export_name = "malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(
    name = "meshd",
    version,
    about = "Sidecar-less service mesh node agent"
)]
struct Cli {
    /// Log filter (tracing/RUST_LOG syntax), e.g. `info,meshd=debug`.
    #[arg(long, global = true, env = "MESHD_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in standalone mode from a YAML file (reloaded when it changes).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Proxy worker threads (default: one per CPU), like ztunnel's worker threads; with 1,
        /// the proxy runs on a single-threaded runtime.
        #[arg(long, env = "MESHD_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        /// On SIGTERM/SIGINT, after the drain, also detach every program and remove every
        /// pin (what `meshd uninstall` does), e.g. when the DaemonSet is deleted. Without
        /// it the capture stays in place for the next agent, which adopts it: pods'
        /// connections are refused, never plaintext, until it runs.
        #[arg(long, env = "MESHD_UNINSTALL_ON_EXIT")]
        uninstall_on_exit: bool,
    },
    /// Pre-flight checks: kernel, BTF, bpffs, cgroup v2, privileges, each program type;
    /// with --config also the trust anchors' and issuer's validity.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Linkerd authorization policy documents.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Per-workload success rate, RPS and latency, like `linkerd viz stat`.
    Stat {
        #[arg(long, default_value = settings::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
        /// Window in seconds (1 to 60), e.g. `10` or `10s`.
        #[arg(long, default_value = "10s", value_parser = parse_secs)]
        window: u64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: views::Output,
    },
    /// Per workload, server, route and authorization: allowed and refused request rates,
    /// success and latency, like `linkerd viz authz`.
    Authz {
        #[arg(long, default_value = settings::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
        /// Only this workload: `NAMESPACE/DEPLOYMENT` (or `DEPLOYMENT`).
        workload: Option<String>,
        /// Window in seconds (1 to 60), e.g. `60` or `60s`.
        #[arg(long, default_value = "60s", value_parser = parse_secs)]
        window: u64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: views::Output,
    },
    /// Who talks to whom, with identities, like `linkerd viz edges`.
    Edges {
        #[arg(long, default_value = settings::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
        #[arg(short, long, value_enum, default_value = "table")]
        output: views::Output,
    },
    /// Live requests, like `linkerd viz tap`.
    Tap {
        #[arg(long, default_value = settings::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
        #[command(flatten)]
        args: views::tap::TapArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: views::Output,
    },
    /// Show or change the agent's log filter at runtime.
    LogLevel {
        #[arg(long, default_value = settings::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
        /// New filter, e.g. `debug` or `info,meshd=trace`.
        filter: Option<String>,
    },
    /// Diagnostics: open an HBONE tunnel by hand as a given identity.
    Diagnostics {
        #[command(subcommand)]
        command: DiagnosticsCommand,
    },
    /// Workload identity: create a trust anchor and issuer.
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Remove everything an agent pinned (detaching its programs): after `meshd run` stopped
    /// (it leaves the capture for the next agent) or crashed.
    Uninstall {
        /// The bpffs root the agent was configured with.
        #[arg(long, default_value = settings::DEFAULT_BPFFS_ROOT)]
        bpffs: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files offline (directories: every *.yaml and *.yml, recursively),
    /// with the refusals Linkerd's admission webhook gives; exit status 1 if any.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DiagnosticsCommand {
    /// TLS + HTTP/2 CONNECT to a peer's port 15008; prints one JSON line.
    Hbone(Box<diagnostics::HboneArgs>),
    /// What governs a workload's port, as the agent has compiled it: server, routes,
    /// authorizations, default policy (like `linkerd diagnostics policy`).
    Policy {
        #[arg(long, default_value = settings::DEFAULT_ADMIN)]
        admin: std::net::SocketAddr,
        /// `NAMESPACE/NAME` of the workload (pod).
        workload: String,
        port: u16,
        #[arg(short, long, value_enum, default_value = "table")]
        output: views::Output,
    },
}

#[derive(Subcommand)]
enum IdentityCommand {
    /// Create a trust anchor (ca.crt, ca.key) and an issuer (issuer.crt, issuer.key),
    /// ECDSA P-256, like `step certificate create ... --profile root-ca / intermediate-ca`.
    Init {
        /// Directory to write the files to.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> std::process::ExitCode {
    match cli_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole chain of causes: what failed and why.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn parse_secs(s: &str) -> Result<u64, String> {
    s.trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))
}

fn small_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn cli_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(&cli.log, cli.log_json);
    match cli.command {
        Command::Stat {
            admin,
            window,
            output,
        } => small_runtime()?.block_on(views::stat::run(
            &views::AdminClient { addr: admin },
            window,
            output,
        )),
        Command::Authz {
            admin,
            workload,
            window,
            output,
        } => small_runtime()?.block_on(views::authz::run(
            &views::AdminClient { addr: admin },
            workload.as_deref(),
            window,
            output,
        )),
        Command::Edges { admin, output } => small_runtime()?.block_on(views::edges::run(
            &views::AdminClient { addr: admin },
            output,
        )),
        Command::Tap {
            admin,
            args,
            output,
        } => small_runtime()?.block_on(views::tap::run(
            &views::AdminClient { addr: admin },
            args,
            output,
        )),
        Command::LogLevel { admin, filter } => small_runtime()?.block_on(async move {
            let client = views::AdminClient { addr: admin };
            let now = match filter {
                Some(f) => client.put("/log-level", &f).await?,
                None => client.get("/log-level").await?.trim().to_string(),
            };
            println!("{now}");
            Ok(())
        }),
        Command::Diagnostics {
            command:
                DiagnosticsCommand::Policy {
                    admin,
                    workload,
                    port,
                    output,
                },
        } => small_runtime()?.block_on(views::policy::run(
            &views::AdminClient { addr: admin },
            &workload,
            port,
            output,
        )),
        Command::Diagnostics {
            command: DiagnosticsCommand::Hbone(args),
        } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            if !runtime.block_on(diagnostics::hbone(*args))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Identity {
            command:
                IdentityCommand::Init {
                    dir,
                    trust_domain,
                    force,
                },
        } => {
            let out = identity::init(&dir, &trust_domain, force)?;
            println!("{out}");
            Ok(())
        }
        Command::Policy(PolicyCommand::Check { paths }) => {
            if !meshd::policy::check::print(&meshd::policy::check::load(&paths)) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Check { config } => {
            let mut outcomes = check::run_checks();
            if let Some(path) = config {
                outcomes.extend(check::identity_checks(&path));
            }
            if !check::print(&outcomes) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Uninstall { bpffs } => {
            let pins = capture::PinPaths::new(&bpffs);
            // Trees of other pin versions too (an upgrade that was not completed).
            for pins in pins.other_versions().into_iter().chain([pins.clone()]) {
                capture::Capture::uninstall(&pins)
                    .with_context(|| format!("removing {}", pins.root().display()))?;
                println!("removed {}", pins.root().display());
            }
            Ok(())
        }
        Command::Run {
            config,
            workers,
            uninstall_on_exit,
        } => {
            let on_exit = if uninstall_on_exit {
                app::OnExit::Uninstall
            } else {
                app::OnExit::KeepCapture
            };
            app::proxy_runtime(workers)?.block_on(app::run(config, on_exit))
        }
    }
}
