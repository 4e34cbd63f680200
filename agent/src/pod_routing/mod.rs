//! The routing in each enrolled pod's network namespace that lets the agent deliver an
//! inbound connection to the app from the client's own address (review H1: the app sees
//! the real client, as ztunnel's in-pod mode gives it, not the pod's own address).
//!
//! The agent's delivery socket is transparent (`IP_TRANSPARENT`), bound to the client's
//! address, and marked (`SO_MARK`). Its SYN goes to the pod's own address (local). The app's
//! answer is addressed to the client, which is not local, and would leave by the pod's
//! default route; so, inside the pod:
//!
//! - `net.ipv4.tcp_fwmark_accept = 1` (IPv4 and IPv6): a connection the app accepts takes
//!   the mark of the SYN that opened it, for its SYN-ACK and every later packet. SYNs from
//!   anywhere else carry no mark, so the app's other connections are unchanged;
//! - `net.ipv4.fwmark_reflect = 1` (and `net.ipv6.fwmark_reflect` with IPv6): a reset the
//!   kernel sends for a port nobody listens on carries the mark of the SYN it answers, so
//!   the agent's delivery is refused at once (and the client is reset) instead of waiting
//!   out its connect timeout while the reset leaves for the real client. Replies to
//!   unmarked packets stay unmarked;
//! - `ip rule add fwmark M/M lookup 15006 pref 15006` and
//!   `ip route add local 0.0.0.0/0 dev lo table 15006` (and the IPv6 twins): a marked
//!   packet is delivered locally, to the agent's socket.
//!
//! The mark is [`DEFAULT_DELIVERY_MARK`] unless the config says otherwise
//! (`inbound.deliveryMark`), for a CNI that uses that bit in pod namespaces.
//! Needs Linux 4.x (all of it is older than the agent's 5.17 minimum).

mod netlink;

use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Type};

use crate::netns::{Netns, NetnsError};

use netlink::{Family, LocalDefaultRoute, MarkRule, Op};

/// Default mark of the agent's delivery sockets (0x3a9e is 15006, the inbound port).
pub(crate) const DEFAULT_DELIVERY_MARK: u32 = 0x3a9e;
/// Routing table of the local default route, and priority of the rule that selects it.
pub(crate) const ROUTING_TABLE: u32 = 15006;
const RULE_PRIORITY: u32 = 15006;
const FWMARK_ACCEPT: &str = "/proc/sys/net/ipv4/tcp_fwmark_accept";
const FWMARK_REFLECT: &str = "/proc/sys/net/ipv4/fwmark_reflect";
const FWMARK_REFLECT6: &str = "/proc/sys/net/ipv6/fwmark_reflect";

#[derive(Debug, thiserror::Error)]
pub(crate) enum RoutingError {
    #[error("{0}")]
    Netns(#[from] NetnsError),
    #[error("{path}: {source}")]
    Sysctl {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{what} in {netns}: {source}")]
    Netlink {
        what: String,
        netns: String,
        source: std::io::Error,
    },
}

/// Installs the routing for marked deliveries in `netns`, for IPv4 and, when `v6`, IPv6.
/// Idempotent: what an earlier agent installed is kept.
pub(crate) fn install(netns: &Netns, mark: u32, v6: bool) -> Result<(), RoutingError> {
    let sysctls: &[&'static str] = if v6 {
        &[FWMARK_ACCEPT, FWMARK_REFLECT, FWMARK_REFLECT6]
    } else {
        &[FWMARK_ACCEPT, FWMARK_REFLECT]
    };
    netns.enter(|| {
        sysctls.iter().try_for_each(|&path| {
            std::fs::write(path, b"1").map_err(|source| RoutingError::Sysctl { path, source })
        })
    })??;
    apply(netns, mark, v6, Op::Add)
}

/// Removes what [`install`] added (when a pod leaves the mesh and goes on running).
/// The sysctls stay on: without marked packets they change nothing, and the pod may have
/// set them itself.
pub(crate) fn remove(netns: &Netns, mark: u32, v6: bool) -> Result<(), RoutingError> {
    apply(netns, mark, v6, Op::Delete)
}

fn apply(netns: &Netns, mark: u32, v6: bool, op: Op) -> Result<(), RoutingError> {
    let sock: OwnedFd = netns
        .socket(
            Domain::from(libc::AF_NETLINK),
            Type::RAW,
            Some(Protocol::from(libc::NETLINK_ROUTE)),
        )?
        .into();
    let families: &[Family] = if v6 {
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    let mut seq = 0;
    for &family in families {
        let rule = MarkRule {
            family,
            mark,
            table: ROUTING_TABLE,
            priority: RULE_PRIORITY,
        };
        let route = LocalDefaultRoute {
            family,
            table: ROUTING_TABLE,
        };
        // Route before rule on the way in, rule before route on the way out: no moment
        // where marked packets are sent to an empty table.
        let steps: [(String, Vec<u8>); 2] = {
            seq += 2;
            let r = (
                format!(
                    "{op:?} route local {}/0 dev lo table {ROUTING_TABLE}",
                    zero(family)
                ),
                route.encode(op, seq - 1),
            );
            let f = (
                format!(
                    "{op:?} rule fwmark {mark:#x}/{mark:#x} lookup {ROUTING_TABLE} pref {RULE_PRIORITY} ({family:?})"
                ),
                rule.encode(op, seq),
            );
            match op {
                Op::Add => [r, f],
                Op::Delete => [f, r],
            }
        };
        for (what, msg) in steps {
            netlink::request(&sock, &msg, op).map_err(|source| RoutingError::Netlink {
                what: what.to_lowercase(),
                netns: netns.path().display().to_string(),
                source,
            })?;
        }
    }
    Ok(())
}

fn zero(family: Family) -> &'static str {
    match family {
        Family::V4 => "0.0.0.0",
        Family::V6 => "::",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{path::PathBuf, process::Command};

    fn in_ns(path: &std::path::Path, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(args)
            .output()
            .expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Installs into a fresh namespace, as `ip` shows it, then removes it again; a second
    /// install or removal changes nothing. Needs root (the suite runs as root).
    #[test]
    fn rules_routes_and_the_sysctl_are_installed_and_removed() {
        assert!(nix::unistd::Uid::effective().is_root(), "needs root");
        let (path_tx, path_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let tid = nix::unistd::gettid();
            path_tx
                .send(PathBuf::from(format!("/proc/self/task/{tid}/ns/net")))
                .unwrap();
            let _ = done_rx.recv();
        });
        let path = path_rx.recv().unwrap();
        let ns = Netns::open(&path).unwrap();
        // The thread's path is only valid for this process: nsenter needs the pid form.
        let pid_path = PathBuf::from(format!(
            "/proc/{}/task/{}",
            std::process::id(),
            path.to_string_lossy().split('/').nth(4).unwrap()
        ))
        .join("ns/net");
        in_ns(&pid_path, &["ip", "link", "set", "lo", "up"]);
        let sysctls = [FWMARK_ACCEPT, FWMARK_REFLECT, FWMARK_REFLECT6];
        let home = sysctls.map(|s| std::fs::read_to_string(s).unwrap());
        install(&ns, 0x3a9e, true).expect("first install");
        install(&ns, 0x3a9e, true).expect("second install");
        for sysctl in sysctls {
            assert_eq!(in_ns(&pid_path, &["cat", sysctl]).trim(), "1", "{sysctl}");
        }
        // The agent's own namespace is untouched.
        assert_eq!(sysctls.map(|s| std::fs::read_to_string(s).unwrap()), home);
        let rules = in_ns(&pid_path, &["ip", "rule"]);
        assert!(
            rules.contains("15006:\tfrom all fwmark 0x3a9e/0x3a9e lookup 15006"),
            "{rules}"
        );
        let rules6 = in_ns(&pid_path, &["ip", "-6", "rule"]);
        assert!(
            rules6.contains("fwmark 0x3a9e/0x3a9e lookup 15006"),
            "{rules6}"
        );
        let routes = in_ns(&pid_path, &["ip", "route", "show", "table", "15006"]);
        assert_eq!(
            routes.trim(),
            "local default dev lo proto static scope host"
        );
        let routes6 = in_ns(&pid_path, &["ip", "-6", "route", "show", "table", "15006"]);
        assert!(routes6.contains("local default dev lo"), "{routes6}");
        for _ in 0..2 {
            remove(&ns, 0x3a9e, true).unwrap();
        }
        assert!(!in_ns(&pid_path, &["ip", "rule"]).contains("15006"));
        assert!(in_ns(&pid_path, &["ip", "route", "show", "table", "15006"]).is_empty());
        drop(done_tx);
        t.join().unwrap();
    }
}
