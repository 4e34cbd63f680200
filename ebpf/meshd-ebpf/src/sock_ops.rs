//! `sockops`: when a captured connection is established, re-keys its original destination
//! from the socket cookie to the client port that the agent's listener sees on accept; when
//! a captured connection closes without being established (refused, reset, timed out,
//! closed while connecting), forgets it, so that `MESHD_SOCK_DST` keeps no entry of it.
//!
//! Attached to each enrolled pod's cgroup (kernel 4.13+; `bpf_get_netns_cookie` here
//! needs 5.15).

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::warn;
use meshd_common::{ClientKey, AF_INET, AF_INET6};

use crate::maps::{MESHD_ORIG_DST, MESHD_SOCK_DST};

#[sock_ops]
pub fn meshd_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => watch_state(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(&ctx),
        BPF_SOCK_OPS_STATE_CB => closed(&ctx),
        _ => {}
    }
    1
}

/// A captured socket sends its SYN: asks for its state changes until it is established.
#[inline(always)]
fn watch_state(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if MESHD_SOCK_DST.get_ptr(cookie).is_some() {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

/// Closed before it was established: its original destination is forgotten.
#[inline(always)]
fn closed(ctx: &SockOpsContext) {
    if ctx.arg(1) == BPF_TCP_CLOSE {
        let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        let _ = MESHD_SOCK_DST.remove(cookie);
    }
}

#[inline(always)]
fn established(ctx: &SockOpsContext) {
    // No more state callbacks for this connection: the agent takes its entry on accept.
    let flags = ctx.cb_flags();
    if flags & BPF_SOCK_OPS_STATE_CB_FLAG != 0 {
        let _ = ctx.set_cb_flags((flags & !BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(dst) = MESHD_SOCK_DST.get_ptr(cookie) else {
        return;
    };
    let dst = unsafe { *dst };
    let family = match ctx.family() {
        2 => AF_INET,
        10 => AF_INET6,
        _ => return,
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
        warn!(ctx, "sockops: cannot record original destination");
    }
    let _ = MESHD_SOCK_DST.remove(cookie);
}
