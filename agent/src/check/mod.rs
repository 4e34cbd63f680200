//! `meshd check`: a pre-flight report in the manner of `linkerd check --pre`. Every check says
//! what it found and, when it fails, how to fix it. The program checks load and attach the
//! real programs, to a scratch cgroup and a scratch network namespace.

use std::{fs::File, path::PathBuf};

use aya::EbpfLoader;

use crate::capture::{programs::OBJECT, Hook};

mod identity;
mod outcome;
pub use identity::identity_checks;
use outcome::{fail, ok};
pub use outcome::{Outcome, Verdict};

/// The minimum kernel: netns cookies in sock_ops and SO_NETNS_COOKIE (5.15), and
/// `ingress_ifindex` in sk_lookup (5.17: the agent's delivery on loopback is not steered).
pub const MIN_KERNEL: (u32, u32) = (5, 17);

fn mounts() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            let dir = f.next()?;
            let ty = f.next()?;
            Some((dir.to_string(), ty.to_string()))
        })
        .collect()
}

/// The cgroup v2 mount point, wherever it is (`/sys/fs/cgroup` or `.../unified`).
pub fn cgroup2_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, t)| t == "cgroup2")
        .map(|(d, _)| PathBuf::from(d))
}

fn bpffs_mount() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|(_, t)| t == "bpf")
        .map(|(d, _)| PathBuf::from(d))
}

fn kernel_version() -> Option<(u32, u32, String)> {
    let release = nix::sys::utsname::uname()
        .ok()?
        .release()
        .to_string_lossy()
        .into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor, release))
}

fn has_caps() -> Result<String, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or("no CapEff in /proc/self/status")?;
    let needed = [
        (21, "CAP_SYS_ADMIN"),
        (12, "CAP_NET_ADMIN"),
        (39, "CAP_BPF"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(bit, _)| eff & (1u64 << bit) == 0)
        .map(|(_, n)| *n)
        .collect();
    if missing.is_empty() {
        Ok("CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF are effective".into())
    } else {
        Err(format!("missing {}", missing.join(", ")))
    }
}

pub fn run_checks() -> Vec<Outcome> {
    let mut out = Vec::new();
    match has_caps() {
        Ok(d) => out.push(ok("privileges", d)),
        Err(e) => out.push(fail(
            "privileges",
            e,
            "run as root, or grant CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF",
        )),
    }
    match kernel_version() {
        Some((maj, min, rel)) if (maj, min) >= MIN_KERNEL => out.push(ok(
            "kernel version",
            format!("{rel} >= {}.{}", MIN_KERNEL.0, MIN_KERNEL.1),
        )),
        Some((_, _, rel)) => out.push(fail(
            "kernel version",
            format!("{rel} is older than {}.{}", MIN_KERNEL.0, MIN_KERNEL.1),
            "meshd needs bpf_get_netns_cookie in sock_ops and SO_NETNS_COOKIE: upgrade the kernel",
        )),
        None => out.push(fail("kernel version", "cannot read uname", "check /proc")),
    }
    if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        out.push(ok("BTF", "/sys/kernel/btf/vmlinux is present"));
    } else {
        out.push(fail(
            "BTF",
            "/sys/kernel/btf/vmlinux is missing",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ));
    }
    let bpffs = bpffs_mount();
    match &bpffs {
        Some(d) => out.push(ok("bpffs", format!("mounted at {}", d.display()))),
        None => out.push(fail(
            "bpffs",
            "no bpf filesystem is mounted",
            "mount -t bpf bpf /sys/fs/bpf",
        )),
    }
    let cg2 = cgroup2_mount();
    match &cg2 {
        Some(d) => out.push(ok("cgroup v2", format!("mounted at {}", d.display()))),
        None => out.push(fail("cgroup v2", "no cgroup2 filesystem is mounted", "mount -t cgroup2 none /sys/fs/cgroup (or boot with systemd.unified_cgroup_hierarchy=1)")),
    }
    out.extend(program_checks(bpffs, cg2));
    out
}

/// Loads the real object and attaches each program to scratch targets, then removes them.
fn program_checks(bpffs: Option<PathBuf>, cg2: Option<PathBuf>) -> Vec<Outcome> {
    let mut out = Vec::new();
    let Some(bpffs) = bpffs else {
        out.push(fail(
            "eBPF programs",
            "not probed: needs bpffs",
            "mount -t bpf bpf /sys/fs/bpf",
        ));
        return out;
    };
    let scratch = bpffs.join(format!("meshd-check-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        out.push(fail(
            "eBPF programs",
            format!("cannot create {}: {e}", scratch.display()),
            "run as root",
        ));
        return out;
    }
    let loaded = EbpfLoader::new()
        .default_map_pin_directory(&scratch)
        .load(OBJECT);
    match loaded {
        Err(e) => out.push(fail(
            "eBPF object",
            e.to_string(),
            "see the kernel version and BTF checks above",
        )),
        Ok(mut ebpf) => {
            out.push(ok("eBPF object", "maps created"));
            let cgroup = cg2
                .as_ref()
                .map(|d| d.join(format!("meshd-check-{}", std::process::id())));
            if let Some(cg) = &cgroup {
                let _ = std::fs::create_dir(cg);
            }
            for hook in Hook::ALL {
                out.push(probe_hook(&mut ebpf, hook, cgroup.as_deref()));
            }
            drop(ebpf);
            if let Some(cg) = &cgroup {
                let _ = std::fs::remove_dir(cg);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(&scratch) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(&scratch);
    out
}

fn probe_hook(ebpf: &mut aya::Ebpf, hook: Hook, cgroup: Option<&std::path::Path>) -> Outcome {
    let name = format!("{} ({})", hook.program(), hook.link_name());
    if let Err(e) = hook.load(ebpf) {
        return fail(
            &name,
            format!("load: {e}"),
            "the kernel lacks this program type or helper",
        );
    }
    let attached = if hook == Hook::SkLookup {
        // A scratch network namespace, created on a throw-away thread.
        std::thread::spawn(move || -> Result<File, String> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string())
        })
        .join()
        .map_err(|_| "probe thread panicked".to_string())
        .and_then(|r| r)
        .and_then(|ns| hook.attach(ebpf, &ns).map_err(|e| e.to_string()))
    } else {
        match cgroup {
            None => Err("no cgroup v2 to attach to".to_string()),
            Some(cg) => File::open(cg)
                .map_err(|e| e.to_string())
                .and_then(|f| hook.attach(ebpf, &f).map_err(|e| e.to_string())),
        }
    };
    match attached {
        Ok(link) => {
            drop(link);
            ok(
                &name,
                format!("loads and attaches to a {}", hook.target_kind()),
            )
        }
        Err(e) => fail(
            &name,
            format!("attach: {e}"),
            "the kernel lacks BPF links for this hook",
        ),
    }
}

/// Prints the report; returns whether every check passed (warnings do not fail it).
pub fn print(outcomes: &[Outcome]) -> bool {
    println!("meshd pre-flight checks\n-----------------------");
    let mut good = true;
    for o in outcomes {
        match &o.verdict {
            Verdict::Ok(d) => println!("√ {}: {d}", o.name),
            Verdict::Warn { problem, fix } => {
                println!("! {}: {problem}\n    fix: {fix}", o.name);
            }
            Verdict::Fail { problem, fix } => {
                good = false;
                println!("× {}: {problem}\n    fix: {fix}", o.name);
            }
        }
    }
    println!();
    if good {
        println!("Status check results are √");
    } else {
        println!("Status check results are ×");
    }
    good
}
