//! `cargo xtask setup`: checks the kernel and installs the build and test tools on a fresh
//! Debian 12 machine. Idempotent: prints and skips whatever is already there.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::util::{self, exec, ok, query, which};

/// Oldest kernel the test suite is run on (meshd itself needs 5.10; see `meshd check`).
const MIN_KERNEL: (u32, u32) = (5, 15);
const BTF: &str = "/sys/kernel/btf/vmlinux";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_VERSION: &str = "0.13";

/// Debian packages needed to build (LLVM 22 for bpf-linker), test, demo and benchmark.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "curl",
    "iperf3",
    "tcpdump",
    "tshark",
    "nghttp2-client",
    "nghttp2-server",
    "wrk",
    "prometheus",
    "python3",
    "python3-h2",
    "python3-websockets",
    "procps",
    "openssl",
];

pub fn run() -> anyhow::Result<()> {
    println!("==> setup: checking the machine");
    check_root()?;
    check_kernel()?;
    check_btf()?;
    check_bpffs()?;
    check_cgroup2()?;
    install_packages()?;
    install_rust_src()?;
    install_bpf_linker()?;
    crate::fuzz::setup()?;
    println!("==> setup: done");
    Ok(())
}

fn check_root() -> anyhow::Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        bail!("setup must run as root (installs packages, mounts bpffs; the tests create network namespaces and cgroups); running as uid {uid}");
    }
    ok("running as root");
    Ok(())
}

/// Parses `6.1.0-18-amd64` into (6, 1).
fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_kernel() -> anyhow::Result<()> {
    let release = query(Command::new("uname").arg("-r"))
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/osrelease").ok())
        .context("cannot read the kernel release (uname -r)")?;
    let release = release.trim();
    let v = parse_kernel(release)
        .with_context(|| format!("cannot parse kernel release {release:?}"))?;
    if v < MIN_KERNEL {
        bail!(
            "kernel {release} is too old: need >= {}.{} (cgroup sock_addr hooks, sk_lookup, BPF links, BTF)",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    ok(&format!(
        "kernel {release} >= {}.{}",
        MIN_KERNEL.0, MIN_KERNEL.1
    ));
    Ok(())
}

fn check_btf() -> anyhow::Result<()> {
    if !Path::new(BTF).exists() {
        bail!("no kernel BTF at {BTF}: the kernel must be built with CONFIG_DEBUG_INFO_BTF=y");
    }
    ok(&format!("kernel BTF at {BTF}"));
    Ok(())
}

fn check_bpffs() -> anyhow::Result<()> {
    let mounted = std::fs::read_to_string("/proc/mounts")
        .context("reading /proc/mounts")?
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
        });
    if mounted {
        ok("bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    println!("==> mount -t bpf bpf /sys/fs/bpf");
    meshd_tests::ensure_bpffs()
        .context("bpffs is not mounted at /sys/fs/bpf and mounting it failed")?;
    Ok(())
}

fn check_cgroup2() -> anyhow::Result<()> {
    let m = meshd_tests::cgroup2_mount()?;
    ok(&format!("cgroup2 mounted at {}", m.display()));
    Ok(())
}

fn installed(pkg: &str) -> bool {
    query(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn install_packages() -> anyhow::Result<()> {
    if which("dpkg-query").is_none() || which("apt-get").is_none() {
        bail!(
            "this is not a Debian-like system (no dpkg-query/apt-get); install these packages by hand: {}",
            PACKAGES.join(" ")
        );
    }
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        ok(&format!(
            "Debian packages installed: {}",
            PACKAGES.join(" ")
        ));
        return Ok(());
    }
    println!("missing Debian packages: {}", missing.join(" "));
    exec(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .arg("update"),
    )?;
    exec(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y"])
        .args(&missing))
    .with_context(|| {
        format!(
            "installing {} failed; llvm-22-dev comes from bookworm-security/bookworm-backports or apt.llvm.org",
            missing.join(" ")
        )
    })?;
    Ok(())
}

fn install_rust_src() -> anyhow::Result<()> {
    if which("rustup").is_none() {
        bail!("rustup is not on PATH: install rustup with the stable and nightly toolchains");
    }
    let toolchains = query(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!("no nightly Rust toolchain (needed to build the eBPF programs with -Z build-std): run `rustup toolchain install nightly`");
    }
    let comps = query(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if comps.lines().any(|l| l.starts_with("rust-src")) {
        ok("rust-src installed for the nightly toolchain");
        return Ok(());
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    if let Some(p) = which("bpf-linker") {
        ok(&format!("bpf-linker at {}", p.display()));
        return Ok(());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut parts = vec![Path::new(LLVM_BIN).to_path_buf()];
    parts.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(parts).context("building PATH")?;

    let mut cmd = util::cargo();
    cmd.env("PATH", &path).args(["install", "bpf-linker"]);
    let spec = format!("bpf-linker@{BPF_LINKER_VERSION}");
    if query(util::cargo().args(["info", &spec])).is_some() {
        // `cargo install --version` wants a requirement, not a bare "0.13".
        cmd.args(["--version", &format!("~{BPF_LINKER_VERSION}")]);
    } else {
        println!("warning: {spec} not found on crates.io; installing the newest bpf-linker");
    }
    cmd.args(["--no-default-features", "--features", "llvm-22"]);
    exec(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::parse_kernel;

    #[test]
    fn kernel_releases() {
        assert_eq!(parse_kernel("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(parse_kernel("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_kernel("5.15"), Some((5, 15)));
        assert_eq!(parse_kernel("x"), None);
        assert!(parse_kernel("5.10.0").unwrap() < (5, 15));
    }
}
