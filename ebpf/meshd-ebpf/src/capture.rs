//! The outbound capture decision shared by connect4 and connect6, and the per-pod
//! accounting of the original-destination entries it records.

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_EXIST, BPF_NOEXIST},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use meshd_common::{IpAddr, OrigDst, OutPortKey, PodConfig, PodCounters};

use crate::maps::{MESHD_PENDING, MESHD_PODS, MESHD_SKIP_OUT, MESHD_SOCK_DST};

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

/// Adding this subtracts one (two's complement).
const SUB_ONE: u64 = u64::MAX;

/// An atomic add whose result is not used (`BPF_XADD`, any kernel): the agent changes the
/// same counters from user space through its memory mapping of `MESHD_PENDING`.
#[inline(always)]
fn add(counter: *mut u64, n: u64) {
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, n,
        );
    }
}

/// Why a connect() could not be captured: it is refused (fail closed), never let through.
pub enum Refused {
    /// The pod has [`PodConfig::max_pending`] captured connections in flight.
    Quota,
    /// `MESHD_SOCK_DST` is full (every pod's entries together).
    Full,
}

/// Remembers where the socket wanted to go, for sock_ops to re-key once it has a port,
/// counted against the pod's quota. A second connect() of the same socket replaces its
/// entry and is not counted again.
#[inline(always)]
pub fn remember(
    ctx: &SockAddrContext,
    netns_cookie: u64,
    pod: &PodConfig,
    ip: IpAddr,
    port: u16,
) -> Result<(), Refused> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let dst = OrigDst {
        ip,
        port,
        _pad: 0,
        stamp_ns: 0,
        netns_cookie,
    };
    if MESHD_SOCK_DST.insert(cookie, dst, BPF_EXIST.into()).is_ok() {
        return Ok(());
    }
    let Some(counters) = MESHD_PENDING.get_ptr_mut(pod.slot) else {
        return Err(Refused::Full);
    };
    let pending = unsafe { &raw mut (*counters).pending };
    add(pending, 1);
    // Added, then compared: concurrent connects may see each other's increment and both
    // be refused at the limit, but the count never stays above it.
    if unsafe { core::ptr::read_volatile(pending) } > u64::from(pod.max_pending) {
        add(pending, SUB_ONE);
        count(counters, Refused::Quota);
        return Err(Refused::Quota);
    }
    if MESHD_SOCK_DST
        .insert(cookie, dst, BPF_NOEXIST.into())
        .is_err()
    {
        add(pending, SUB_ONE);
        count(counters, Refused::Full);
        return Err(Refused::Full);
    }
    Ok(())
}

/// Counts a refusal in the pod's counters.
#[inline(always)]
pub fn count(counters: *mut PodCounters, why: Refused) {
    let field = match why {
        Refused::Quota => unsafe { &raw mut (*counters).refused_quota },
        Refused::Full => unsafe { &raw mut (*counters).refused_full },
    };
    add(field, 1);
}

/// The counters of the pod with this namespace cookie (`None` once it left).
#[inline(always)]
pub fn counters_of(netns_cookie: u64) -> Option<*mut PodCounters> {
    let pod = MESHD_PODS.get_ptr(netns_cookie)?;
    MESHD_PENDING.get_ptr_mut(unsafe { (*pod).slot })
}

/// One of the pod's entries is gone.
#[inline(always)]
pub fn release_one(netns_cookie: u64) {
    if let Some(counters) = counters_of(netns_cookie) {
        add(unsafe { &raw mut (*counters).pending }, SUB_ONE);
    }
}

/// Forgets the socket's `MESHD_SOCK_DST` entry (closed before it was established, or
/// released), uncounting it.
#[inline(always)]
pub fn forget_socket(cookie: u64) {
    let Some(dst) = MESHD_SOCK_DST.get_ptr(cookie) else {
        return;
    };
    let netns_cookie = unsafe { (*dst).netns_cookie };
    // Only the path that removed it uncounts it.
    if MESHD_SOCK_DST.remove(cookie).is_ok() {
        release_one(netns_cookie);
    }
}
