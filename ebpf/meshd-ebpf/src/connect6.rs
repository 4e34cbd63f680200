//! `cgroup/connect6`: the IPv6 twin of connect4, including IPv4-mapped addresses of
//! dual-stack sockets (`::ffff:a.b.c.d`), which go to the IPv4 listener.
//!
//! Attached to each enrolled pod's cgroup (kernel 4.17+, BPF link since 5.7).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use aya_log_ebpf::debug;
use meshd_common::{IpAddr, AF_INET, AF_INET6, POD_FLAG_IPV6};

use crate::capture::{enrolled_pod, port_skipped, remember, Refused};

const V4_MAPPED_BE: u32 = 0x0000_ffffu32.to_be();
const LOOPBACK4_BE: u32 = u32::from_be_bytes([127, 0, 0, 1]).to_be();
const ONE_BE: u32 = 1u32.to_be();

#[cgroup_sock_addr(connect6)]
pub fn meshd_connect6(ctx: SockAddrContext) -> i32 {
    let Some((netns, pod)) = enrolled_pod(&ctx) else {
        return 1;
    };
    let sa = unsafe { &mut *ctx.sock_addr };
    let w = [
        unsafe { core::ptr::read_volatile(&sa.user_ip6[0]) },
        unsafe { core::ptr::read_volatile(&sa.user_ip6[1]) },
        unsafe { core::ptr::read_volatile(&sa.user_ip6[2]) },
        unsafe { core::ptr::read_volatile(&sa.user_ip6[3]) },
    ];
    let port = u16::from_be(sa.user_port as u16);
    let v4_mapped = w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_BE;
    let loopback = if v4_mapped {
        u32::from_be(w[3]) >> 24 == 127
    } else {
        w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == ONE_BE
    };
    if loopback || port_skipped(netns, port) {
        return 1;
    }
    if !v4_mapped && pod.flags & POD_FLAG_IPV6 == 0 {
        // No IPv6 listener in this pod: leave the connection alone rather than break it.
        return 1;
    }
    let orig = if v4_mapped {
        IpAddr {
            addr: [w[3], 0, 0, 0],
            family: AF_INET,
            _pad: 0,
        }
    } else {
        IpAddr {
            addr: w,
            family: AF_INET6,
            _pad: 0,
        }
    };
    if let Err(why) = remember(&ctx, netns, &pod, orig, port) {
        // Fail closed: the app gets EPERM rather than an uncaptured connection. Counted in
        // MESHD_PENDING (the agent's capture_refused_total), logged at debug only: a pod
        // must not be able to flood the agent's log.
        match why {
            Refused::Quota => debug!(
                &ctx,
                "connect6: the pod has its quota of captured connections in flight, refused"
            ),
            Refused::Full => debug!(&ctx, "connect6: original-destination map full, refused"),
        }
        return 0;
    }
    if v4_mapped {
        sa.user_ip6[3] = LOOPBACK4_BE;
    } else {
        sa.user_ip6[0] = 0;
        sa.user_ip6[1] = 0;
        sa.user_ip6[2] = 0;
        sa.user_ip6[3] = ONE_BE;
    }
    sa.user_port = u32::from(pod.outbound_port.to_be());
    1
}
