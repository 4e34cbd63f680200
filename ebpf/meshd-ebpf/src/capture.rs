//! The outbound capture decision shared by connect4 and connect6.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use meshd_common::{IpAddr, OrigDst, OutPortKey, PodConfig};

use crate::maps::{MESHD_PODS, MESHD_SKIP_OUT, MESHD_SOCK_DST};

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

/// The pod this connect() belongs to and its capture settings, or `None` when the socket is
/// not a TCP socket of an enrolled pod (UDP, the agent's own sockets, other namespaces).
#[inline(always)]
pub fn enrolled_pod(ctx: &SockAddrContext) -> Option<(u64, PodConfig)> {
    let sa: &bpf_sock_addr = unsafe { &*ctx.sock_addr };
    if sa.type_ != SOCK_STREAM || (sa.protocol != 0 && sa.protocol != IPPROTO_TCP) {
        return None;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast()) };
    let pod = MESHD_PODS.get_ptr(netns)?;
    Some((netns, unsafe { *pod }))
}

/// True when the user excluded this destination port from capture for the pod.
#[inline(always)]
pub fn port_skipped(netns_cookie: u64, port: u16) -> bool {
    let key = OutPortKey {
        netns_cookie,
        port,
        _pad: [0; 3],
    };
    MESHD_SKIP_OUT.get_ptr(key).is_some()
}

/// Remembers where the socket wanted to go, for sock_ops to re-key once it has a port.
#[inline(always)]
pub fn remember(ctx: &SockAddrContext, netns_cookie: u64, ip: IpAddr, port: u16) -> bool {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let dst = OrigDst {
        ip,
        port,
        _pad: [0; 5],
        netns_cookie,
    };
    MESHD_SOCK_DST.insert(cookie, dst, 0).is_ok()
}
