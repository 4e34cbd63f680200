//! `sockops`: when a captured connection is established, re-keys its original destination
//! from the socket cookie to the client port that the agent's listener sees on accept.
//!
//! Attached to each enrolled pod's cgroup (kernel 4.13+; `bpf_get_netns_cookie` here
//! needs 5.15).

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::warn;
use meshd_common::{ClientKey, AF_INET, AF_INET6};

use crate::maps::{MESHD_ORIG_DST, MESHD_SOCK_DST};

#[sock_ops]
pub fn meshd_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(dst) = MESHD_SOCK_DST.get_ptr(cookie) else {
        return 1;
    };
    let dst = unsafe { *dst };
    let family = match ctx.family() {
        2 => AF_INET,
        10 => AF_INET6,
        _ => return 1,
    };
    // connect6 sends a dual-stack socket's IPv4-mapped destination to the IPv4 listener,
    // where the agent looks it up as IPv4: the key has the destination's family.
    let family = if dst.ip.family == AF_INET {
        AF_INET
    } else {
        family
    };
    let key = ClientKey {
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.ops.cast()) },
        port: ctx.local_port() as u16,
        family,
        _pad: 0,
    };
    if MESHD_ORIG_DST.insert(key, dst, 0).is_err() {
        warn!(&ctx, "sockops: cannot record original destination");
    }
    let _ = MESHD_SOCK_DST.remove(cookie);
    1
}
