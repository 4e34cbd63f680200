//! `cgroup/connect4`: sends an enrolled pod's outbound IPv4 TCP connections to the agent's
//! outbound listener on the pod's loopback, and records the original destination.
//!
//! Attached to each enrolled pod's cgroup (kernel 4.17+, BPF link since 5.7). A connect
//! whose original destination cannot be recorded (the pod's quota, or the map, is full) is
//! refused with `EPERM`: never let through uncaptured. Loopback
//! destinations, UDP and excluded ports are left alone.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use aya_log_ebpf::debug;
use meshd_common::{IpAddr, AF_INET};

use crate::capture::{enrolled_pod, port_skipped, remember, Refused};

const LOOPBACK_BE: u32 = u32::from_be_bytes([127, 0, 0, 1]).to_be();

#[cgroup_sock_addr(connect4)]
pub fn meshd_connect4(ctx: SockAddrContext) -> i32 {
    let Some((netns, pod)) = enrolled_pod(&ctx) else {
        return 1;
    };
    let sa = unsafe { &mut *ctx.sock_addr };
    let ip = sa.user_ip4;
    let port = u16::from_be(sa.user_port as u16);
    if u32::from_be(ip) >> 24 == 127 || port_skipped(netns, port) {
        return 1;
    }
    let orig = IpAddr {
        addr: [ip, 0, 0, 0],
        family: AF_INET,
        _pad: 0,
    };
    if let Err(why) = remember(&ctx, netns, &pod, orig, port) {
        // Fail closed: the app gets EPERM rather than an uncaptured connection. Counted in
        // MESHD_PENDING (the agent's capture_refused_total), logged at debug only: a pod
        // must not be able to flood the agent's log.
        match why {
            Refused::Quota => debug!(
                &ctx,
                "connect4: the pod has its quota of captured connections in flight, refused"
            ),
            Refused::Full => debug!(&ctx, "connect4: original-destination map full, refused"),
        }
        return 0;
    }
    debug!(&ctx, "connect4: capture {:i}:{}", u32::from_be(ip), port);
    sa.user_ip4 = LOOPBACK_BE;
    sa.user_port = u32::from(pod.outbound_port.to_be());
    1
}
