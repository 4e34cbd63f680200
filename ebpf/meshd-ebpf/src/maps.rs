//! Maps shared by the programs and the agent. All are pinned by name under the agent's
//! versioned bpffs directory, so a restarted agent adopts them.

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, SockHash},
};
use meshd_common::{
    ClientKey, DeliveryKey, InPortKey, IpAddr, OrigDst, OutPortKey, PodConfig, PodCounters,
    ORIG_DST_ENTRIES, POD_SLOTS,
};

/// Enrolled pods by network namespace cookie; connect4/connect6 capture only these.
#[map(name = "MESHD_PODS")]
pub static MESHD_PODS: HashMap<u64, PodConfig> = HashMap::pinned(4096, 0);

/// Original destination by socket cookie, from connect until the connection is established
/// (or closed, or released). A plain hash, not an LRU: no pod's entry is ever evicted by
/// another's; each entry counts against its pod's quota ([`MESHD_PENDING`]).
#[map(name = "MESHD_SOCK_DST")]
pub static MESHD_SOCK_DST: HashMap<u64, OrigDst> =
    HashMap::pinned(ORIG_DST_ENTRIES, BPF_F_NO_PREALLOC);

/// Original destination by the client's port on the pod loopback, read by the agent on
/// accept (or swept by it when nobody accepted it for a minute). Counted like
/// [`MESHD_SOCK_DST`].
#[map(name = "MESHD_ORIG_DST")]
pub static MESHD_ORIG_DST: HashMap<ClientKey, OrigDst> =
    HashMap::pinned(ORIG_DST_ENTRIES, BPF_F_NO_PREALLOC);

/// Per-pod counters by [`PodConfig::slot`]: in-flight entries of the two maps above and
/// refusals. Memory-mapped by the agent, which decrements `pending` when it takes or sweeps
/// an entry.
#[map(name = "MESHD_PENDING")]
pub static MESHD_PENDING: Array<PodCounters> = Array::pinned(POD_SLOTS, BPF_F_MMAPABLE);

/// Outbound destination ports that skip the agent, per pod.
#[map(name = "MESHD_SKIP_OUT")]
pub static MESHD_SKIP_OUT: HashMap<OutPortKey, u8> = HashMap::pinned(16384, 0);

/// Inbound ports that are not steered to the agent, per pod address.
#[map(name = "MESHD_SKIP_IN")]
pub static MESHD_SKIP_IN: HashMap<InPortKey, u8> = HashMap::pinned(16384, 0);

/// Enrolled pod addresses, to the network namespace cookie of their pod. sk_lookup
/// refuses (fails closed) a connection to one of these whose listener is missing.
#[map(name = "MESHD_POD_ADDRS")]
pub static MESHD_POD_ADDRS: HashMap<IpAddr, u64> = HashMap::pinned(8192, 0);

/// The agent's inbound listening socket in each enrolled pod, by pod address.
#[map(name = "MESHD_LISTENERS")]
pub static MESHD_LISTENERS: SockHash<IpAddr> = SockHash::pinned(8192, 0);

/// Connections the agent is opening to an app from the client's own address (transparent
/// delivery), while their handshake runs: sk_lookup leaves them to the normal lookup (else
/// they would be steered back to the agent, a loop). Inserted just before the agent's
/// `connect` and removed once it returns.
#[map(name = "MESHD_DELIVERY")]
pub static MESHD_DELIVERY: HashMap<DeliveryKey, u8> = HashMap::pinned(16384, 0);
