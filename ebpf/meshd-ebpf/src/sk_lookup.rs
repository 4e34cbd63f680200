//! `sk_lookup`: steers inbound TCP connections for an enrolled pod's addresses to the
//! agent's inbound listener in the pod's network namespace, and refuses them while that
//! listener is missing (fail closed).
//!
//! Attached to each enrolled pod's network namespace. Needs kernel 5.17+ for
//! `ingress_ifindex` (sk_lookup itself is 5.9+). Not steered, left to the normal socket
//! lookup:
//! - the agent's own delivery to the app from the client's address (transparent delivery,
//!   review H1): its 4-tuple is in [`MESHD_DELIVERY`] while the agent connects;
//! - a connection whose source address is its destination address: the agent's own
//!   delivery to the app (it connects to the pod's address from that same address, bound
//!   explicitly, inside the pod; without this check the delivery would be steered back to
//!   the agent, a loop) and a pod's connections to its own address (the kernel's choice of
//!   source for a local destination, but for a secondary address of the same device). A packet from outside with a local source
//!   address is dropped by the kernel as a martian (`accept_local` is off by default), so
//!   this cannot be used from another host or pod to go around the agent;
//! - what is addressed to an address on the loopback device (`ingress_ifindex` 1: for a
//!   locally delivered packet the kernel reports the device that holds the destination
//!   address, not `lo`): review M5, a pod that put another pod's address on its own `lo`
//!   and connects to it locally must never be steered into that pod's listener, which the
//!   IP-keyed [`MESHD_LISTENERS`] would do (`bpf_sk_lookup_assign` does not check the
//!   socket's namespace, and `bpf_get_netns_cookie` is not allowed in this program type);
//! - loopback destinations, UDP, the agent's own ports and the pod's skipped inbound ports;
//! - addresses that are not enrolled ([`MESHD_POD_ADDRS`]), and those of another pod: each
//!   pod has its own instance of this program, loaded with its namespace cookie
//!   ([`NETNS_COOKIE`]), which steers only the addresses [`MESHD_POD_ADDRS`] gives to that
//!   cookie (review M5: a packet for another pod's address injected through a tun or veth
//!   of the pod's own namespace reaches no listener of the other pod).
//!
//! An enrolled address whose listener is not in [`MESHD_LISTENERS`] (the agent crashed, is
//! restarting or draining) is dropped: the client's SYN is answered with a reset, and the
//! app never sees a connection that bypassed the agent.

use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use aya_log_ebpf::warn;
use meshd_common::{DeliveryKey, InPortKey, IpAddr, AF_INET, AF_INET6, AGENT_PORTS};

use crate::maps::{MESHD_DELIVERY, MESHD_LISTENERS, MESHD_POD_ADDRS, MESHD_SKIP_IN};

const IPPROTO_TCP: u32 = 6;
const SK_DROP: u32 = 0;
const SK_PASS: u32 = 1;
/// The loopback device's index: `lo` is the first device of every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// The network namespace cookie of the pod this instance is loaded for and attached to:
/// the agent loads one instance per pod with it set (`EbpfLoader::override_global`), as
/// `bpf_get_netns_cookie` is not allowed in sk_lookup programs.
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

#[inline(always)]
fn netns_cookie() -> u64 {
    // Volatile: the value is the agent's, set at load time, not this 0.
    unsafe { core::ptr::read_volatile(&raw const NETNS_COOKIE) }
}

#[sk_lookup]
pub fn meshd_sk_lookup(ctx: SkLookupContext) -> u32 {
    let lk = unsafe { &*ctx.lookup };
    if lk.protocol != IPPROTO_TCP || lk.ingress_ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    let port = lk.local_port as u16;
    let (ip, remote) = match lk.family {
        2 => {
            if u32::from_be(lk.local_ip4) >> 24 == 127 || lk.remote_ip4 == lk.local_ip4 {
                return SK_PASS;
            }
            (
                IpAddr {
                    addr: [lk.local_ip4, 0, 0, 0],
                    family: AF_INET,
                    _pad: 0,
                },
                IpAddr {
                    addr: [lk.remote_ip4, 0, 0, 0],
                    family: AF_INET,
                    _pad: 0,
                },
            )
        }
        10 => {
            let addr = [
                unsafe { core::ptr::read_volatile(&lk.local_ip6[0]) },
                unsafe { core::ptr::read_volatile(&lk.local_ip6[1]) },
                unsafe { core::ptr::read_volatile(&lk.local_ip6[2]) },
                unsafe { core::ptr::read_volatile(&lk.local_ip6[3]) },
            ];
            let remote = [
                unsafe { core::ptr::read_volatile(&lk.remote_ip6[0]) },
                unsafe { core::ptr::read_volatile(&lk.remote_ip6[1]) },
                unsafe { core::ptr::read_volatile(&lk.remote_ip6[2]) },
                unsafe { core::ptr::read_volatile(&lk.remote_ip6[3]) },
            ];
            if addr == [0, 0, 0, 1u32.to_be()] || remote == addr {
                return SK_PASS;
            }
            (
                IpAddr {
                    addr,
                    family: AF_INET6,
                    _pad: 0,
                },
                IpAddr {
                    addr: remote,
                    family: AF_INET6,
                    _pad: 0,
                },
            )
        }
        _ => return SK_PASS,
    };
    let delivery = DeliveryKey {
        remote,
        local: ip,
        remote_port: u16::from_be(lk.remote_port),
        local_port: port,
    };
    if MESHD_DELIVERY.get_ptr(delivery).is_some() {
        // The agent's own delivery to the app, from the client's address: not again.
        return SK_PASS;
    }
    let mut i = 0;
    while i < AGENT_PORTS.len() {
        if AGENT_PORTS[i] == port {
            return SK_PASS;
        }
        i += 1;
    }
    let skip = InPortKey {
        ip,
        port,
        _pad: [0; 3],
    };
    if MESHD_SKIP_IN.get_ptr(skip).is_some() {
        return SK_PASS;
    }
    match MESHD_POD_ADDRS.get_ptr(ip) {
        // An enrolled address of the pod this instance is loaded for.
        Some(owner) if unsafe { *owner } == netns_cookie() => {}
        // Not enrolled, or another pod's address (review M5: a packet for it that a pod
        // with NET_ADMIN injects through a device of its own namespace must not be steered
        // into the other pod's listener): the normal lookup.
        _ => return SK_PASS,
    }
    match MESHD_LISTENERS.redirect_sk_lookup(&ctx, ip, 0) {
        Ok(()) => SK_PASS,
        // -ENOENT: enrolled, but the agent's listener is gone (crashed, restarting,
        // draining): refused, never delivered around the agent.
        Err(-2) => SK_DROP,
        Err(e) => {
            warn!(&ctx, "sk_lookup: assign to agent listener failed: {}", e);
            SK_DROP
        }
    }
}
