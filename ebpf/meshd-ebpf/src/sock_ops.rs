//! `sockops`: when a captured connection is established, re-keys its original destination
//! from the socket cookie to the client port that the agent's listener sees on accept; when
//! a captured connection closes without being established (refused, reset, timed out,
//! closed while connecting), forgets it, so that `MESHD_SOCK_DST` keeps no entry of it.
//!
//! Every entry counts against its pod's quota in `MESHD_PENDING` from connect4/6 until the
//! agent takes it: moved here from one map to the other it stays counted; forgotten here it
//! is uncounted. A connect() that fails before its SYN never comes here: `sock_release`
//! forgets that one.
//!
//! Attached to each enrolled pod's cgroup (kernel 4.13+; `bpf_get_netns_cookie` here
//! needs 5.15).

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use aya_log_ebpf::warn;
use meshd_common::{ClientKey, AF_INET, AF_INET6};

use crate::{
    capture::{count, counters_of, forget_socket, release_one, Refused},
    maps::{MESHD_ORIG_DST, MESHD_SOCK_DST},
};

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
        forget_socket(unsafe { bpf_get_socket_cookie(ctx.ops.cast()) });
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
    let mut dst = unsafe { *dst };
    dst.stamp_ns = unsafe { bpf_ktime_get_ns() };
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
    if MESHD_ORIG_DST.insert(key, dst, BPF_NOEXIST.into()).is_ok() {
        // Moved: still counted.
        let _ = MESHD_SOCK_DST.remove(cookie);
        return;
    }
    if MESHD_ORIG_DST.insert(key, dst, BPF_EXIST.into()).is_ok() {
        // The port's earlier entry was never taken (its connection died before the agent
        // accepted it): replaced, and this one counted once.
        if MESHD_SOCK_DST.remove(cookie).is_ok() {
            release_one(dst.netns_cookie);
        }
        return;
    }
    // The map is full: the agent will close this connection, which has no destination.
    warn!(
        ctx,
        "sockops: cannot record original destination (map full)"
    );
    if let Some(counters) = counters_of(dst.netns_cookie) {
        count(counters, Refused::Full);
    }
    if MESHD_SOCK_DST.remove(cookie).is_ok() {
        release_one(dst.netns_cookie);
    }
}
