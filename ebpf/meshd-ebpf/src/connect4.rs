//! `cgroup/connect4`: sends an enrolled pod's outbound IPv4 TCP connections to the agent's
//! outbound listener on the pod's loopback, and records the original destination.
//!
//! Attached to each enrolled pod's cgroup (kernel 4.17+, BPF link since 5.7). Loopback
//! destinations, UDP and excluded ports are left alone.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use aya_log_ebpf::{debug, warn};
use meshd_common::{IpAddr, AF_INET};

use crate::capture::{enrolled_pod, port_skipped, remember};

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
    if !remember(&ctx, netns, orig, port) {
        warn!(
            &ctx,
            "connect4: original-destination map full, not capturing"
        );
        return 1;
    }
    debug!(&ctx, "connect4: capture {:i}:{}", u32::from_be(ip), port);
    sa.user_ip4 = LOOPBACK_BE;
    sa.user_port = u32::from(pod.outbound_port.to_be());
    1
}
