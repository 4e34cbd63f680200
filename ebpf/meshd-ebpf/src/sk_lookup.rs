//! `sk_lookup`: steers inbound TCP connections for an enrolled pod's addresses to the
//! agent's inbound listener in the pod's network namespace.
//!
//! Attached to each enrolled pod's network namespace (kernel 5.9+). Loopback (how the agent
//! delivers to the app), UDP, the agent's own ports and excluded ports are not steered.

use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use aya_log_ebpf::warn;
use meshd_common::{InPortKey, IpAddr, AF_INET, AF_INET6, AGENT_PORTS};

use crate::maps::{MESHD_LISTENERS, MESHD_SKIP_IN};

const IPPROTO_TCP: u32 = 6;
const SK_PASS: u32 = 1;

#[sk_lookup]
pub fn meshd_sk_lookup(ctx: SkLookupContext) -> u32 {
    let lk = unsafe { &*ctx.lookup };
    if lk.protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    let port = lk.local_port as u16;
    let ip = match lk.family {
        2 => {
            if u32::from_be(lk.local_ip4) >> 24 == 127 {
                return SK_PASS;
            }
            IpAddr {
                addr: [lk.local_ip4, 0, 0, 0],
                family: AF_INET,
                _pad: 0,
            }
        }
        10 => {
            let addr = [
                unsafe { core::ptr::read_volatile(&lk.local_ip6[0]) },
                unsafe { core::ptr::read_volatile(&lk.local_ip6[1]) },
                unsafe { core::ptr::read_volatile(&lk.local_ip6[2]) },
                unsafe { core::ptr::read_volatile(&lk.local_ip6[3]) },
            ];
            if addr == [0, 0, 0, 1u32.to_be()] {
                return SK_PASS;
            }
            IpAddr {
                addr,
                family: AF_INET6,
                _pad: 0,
            }
        }
        _ => return SK_PASS,
    };
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
    match MESHD_LISTENERS.redirect_sk_lookup(&ctx, ip, 0) {
        // -ENOENT: not an enrolled address of this namespace (or the agent is restarting).
        Ok(()) | Err(-2) => SK_PASS,
        Err(e) => {
            warn!(&ctx, "sk_lookup: assign to agent listener failed: {}", e);
            SK_PASS
        }
    }
}
