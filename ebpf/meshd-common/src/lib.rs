//! Types shared between meshd's eBPF programs and the agent.
//!
//! Every struct here is `#[repr(C)]`, has no implicit padding and is used as a map key or
//! value on both sides, so the layout is part of the pinned-map ABI: changing it means
//! bumping [`PIN_VERSION`].
#![no_std]

/// Version of the bpffs layout (`/sys/fs/bpf/meshd/v<N>`), bumped on any map ABI change.
///
/// v2: `MESHD_POD_ADDRS` (enrolled pod addresses, for sk_lookup's fail-closed refusal).
/// v3: `MESHD_SOCK_DST` and `MESHD_ORIG_DST` are plain hashes (no LRU eviction) counted
/// against a per-pod quota in `MESHD_PENDING`; `PodConfig` has the pod's counter slot and
/// quota, `OrigDst` a timestamp; the `meshd_release` (cgroup/sock_release) program; one sk_lookup program
/// per pod.
pub const PIN_VERSION: u32 = 3;

/// Port of the agent's outbound listener inside each enrolled pod (on loopback).
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the agent's inbound plaintext listener inside each enrolled pod (on loopback:
/// only sk_lookup reaches it).
pub const INBOUND_PORT: u16 = 15006;
/// Port of the agent's inbound HBONE (mTLS) listener inside each enrolled pod.
pub const HBONE_PORT: u16 = 15008;

/// Ports that belong to the agent and are never steered by sk_lookup.
pub const AGENT_PORTS: [u16; 3] = [OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT];

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Map names, as `bpftool map show` prints them (at most 15 bytes).
pub mod maps {
    pub const PODS: &str = "MESHD_PODS";
    pub const SOCK_DST: &str = "MESHD_SOCK_DST";
    pub const ORIG_DST: &str = "MESHD_ORIG_DST";
    pub const SKIP_OUT: &str = "MESHD_SKIP_OUT";
    pub const SKIP_IN: &str = "MESHD_SKIP_IN";
    pub const LISTENERS: &str = "MESHD_LISTENERS";
    pub const POD_ADDRS: &str = "MESHD_POD_ADDRS";
    pub const PENDING: &str = "MESHD_PENDING";
    pub const DELIVERY: &str = "MESHD_DELIVERY";
}

/// Program names (the Rust function names in `meshd-ebpf`, at most 15 bytes).
pub mod programs {
    pub const CONNECT4: &str = "meshd_connect4";
    pub const CONNECT6: &str = "meshd_connect6";
    pub const SOCKOPS: &str = "meshd_sockops";
    pub const SK_LOOKUP: &str = "meshd_sk_lookup";
    pub const SOCK_RELEASE: &str = "meshd_release";
}

/// The global of the sk_lookup program that holds the network namespace cookie of the one
/// pod an instance is loaded for (`EbpfLoader::override_global`).
pub const SK_LOOKUP_NETNS_COOKIE: &str = "NETNS_COOKIE";

/// Entries of `MESHD_SOCK_DST` and of `MESHD_ORIG_DST` (each): room for
/// [`DEFAULT_MAX_PENDING`] in-flight captured connections of 64 pods at once. The maps
/// allocate entries as they are used (`BPF_F_NO_PREALLOC`).
pub const ORIG_DST_ENTRIES: u32 = 262_144;
/// The default quota of in-flight captured connections per pod ([`PodConfig::max_pending`]).
pub const DEFAULT_MAX_PENDING: u32 = 4096;
/// Slots of `MESHD_PENDING`, one per enrolled pod (as many as `MESHD_PODS` holds).
pub const POD_SLOTS: u32 = 4096;

/// An IPv4 or IPv6 address in network byte order. IPv4 is stored in `addr[0]` with the
/// other words zero; `family` tells which.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct IpAddr {
    pub addr: [u32; 4],
    pub family: u16,
    pub _pad: u16,
}

/// An enrolled pod, keyed by its network namespace cookie in [`maps::PODS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodConfig {
    /// The agent's outbound listener port on the pod's loopback (host byte order).
    pub outbound_port: u16,
    /// [`POD_FLAG_IPV6`] and friends.
    pub flags: u16,
    /// The pod's [`PodCounters`] in `MESHD_PENDING` (an array index, below [`POD_SLOTS`]).
    pub slot: u32,
    /// In-flight captured connections the pod may have at once (recorded by connect4/6,
    /// not yet accepted by the agent): above it, connect() fails with `EPERM`.
    pub max_pending: u32,
}

/// One pod's counters in `MESHD_PENDING`, shared with the agent through a memory mapping:
/// the programs and the agent change them with atomic adds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodCounters {
    /// Entries of the pod in `MESHD_SOCK_DST` and `MESHD_ORIG_DST` together.
    pub pending: u64,
    /// connect()s refused because the pod had [`PodConfig::max_pending`] in flight.
    pub refused_quota: u64,
    /// connect()s refused (or established connections without a recorded destination)
    /// because a node-wide map was full.
    pub refused_full: u64,
}

/// The agent listens on `[::1]:outbound_port` too, so IPv6 connections can be captured.
pub const POD_FLAG_IPV6: u16 = 1;

/// Original destination of a captured connection, recorded by connect4/connect6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OrigDst {
    pub ip: IpAddr,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
    /// `CLOCK_MONOTONIC` nanoseconds when sock_ops moved the entry to `MESHD_ORIG_DST`
    /// (0 in `MESHD_SOCK_DST`): the agent sweeps entries nobody accepted.
    pub stamp_ns: u64,
    /// Network namespace cookie of the pod that made the connection.
    pub netns_cookie: u64,
}

/// Key of [`maps::ORIG_DST`]: the client end of the redirected connection as the agent's
/// listener sees it (its source port on the pod's loopback), in the pod's namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ClientKey {
    pub netns_cookie: u64,
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
}

/// Key of [`maps::SKIP_OUT`]: a destination port a pod's outbound traffic skips the agent for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct OutPortKey {
    pub netns_cookie: u64,
    /// Host byte order.
    pub port: u16,
    pub _pad: [u16; 3],
}

/// Key of [`maps::SKIP_IN`]: an inbound port of a pod address that is not steered to the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct InPortKey {
    pub ip: IpAddr,
    /// Host byte order.
    pub port: u16,
    pub _pad: [u16; 3],
}

/// Key of [`maps::DELIVERY`]: a connection the agent is opening to an app from the client's
/// own address (transparent delivery), as sk_lookup sees its SYN arrive: `remote` is the
/// client's address and the port the agent bound, `local` the pod's address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DeliveryKey {
    pub remote: IpAddr,
    pub local: IpAddr,
    /// Host byte order.
    pub remote_port: u16,
    /// Host byte order.
    pub local_port: u16,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), plain integers, without implicit padding.
    unsafe impl aya::Pod for IpAddr {}
    unsafe impl aya::Pod for PodConfig {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for PodCounters {}
    unsafe impl aya::Pod for ClientKey {}
    unsafe impl aya::Pod for OutPortKey {}
    unsafe impl aya::Pod for InPortKey {}
    unsafe impl aya::Pod for DeliveryKey {}
}

/// The layouts both sides compile: the eBPF programs (`meshd-ebpf`) write and read these
/// structs byte for byte, the agent (`agent/src/capture/maps.rs`) reads and writes the same
/// bytes through the pinned maps. A change here that these tests catch is a map ABI change.
#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    /// Size of one field, from the field's real type.
    fn field<T, F>(_: fn(&T) -> &F) -> usize {
        size_of::<F>()
    }

    /// Every key and value is exactly the sum of its fields: no implicit padding, whose bytes
    /// the kernel would hash (keys) or copy uninitialised (values), and which the `aya::Pod`
    /// impls below promise does not exist.
    #[test]
    fn no_implicit_padding() {
        let ip = field(|v: &IpAddr| &v.addr) + field(|v: &IpAddr| &v.family);
        assert_eq!(size_of::<IpAddr>(), ip + field(|v: &IpAddr| &v._pad));
        assert_eq!(
            size_of::<PodConfig>(),
            field(|v: &PodConfig| &v.outbound_port)
                + field(|v: &PodConfig| &v.flags)
                + field(|v: &PodConfig| &v.slot)
                + field(|v: &PodConfig| &v.max_pending)
        );
        assert_eq!(
            size_of::<PodCounters>(),
            field(|v: &PodCounters| &v.pending)
                + field(|v: &PodCounters| &v.refused_quota)
                + field(|v: &PodCounters| &v.refused_full)
        );
        assert_eq!(
            size_of::<OrigDst>(),
            field(|v: &OrigDst| &v.ip)
                + field(|v: &OrigDst| &v.port)
                + field(|v: &OrigDst| &v._pad)
                + field(|v: &OrigDst| &v.stamp_ns)
                + field(|v: &OrigDst| &v.netns_cookie)
        );
        assert_eq!(
            size_of::<ClientKey>(),
            field(|v: &ClientKey| &v.netns_cookie)
                + field(|v: &ClientKey| &v.port)
                + field(|v: &ClientKey| &v.family)
                + field(|v: &ClientKey| &v._pad)
        );
        assert_eq!(
            size_of::<OutPortKey>(),
            field(|v: &OutPortKey| &v.netns_cookie)
                + field(|v: &OutPortKey| &v.port)
                + field(|v: &OutPortKey| &v._pad)
        );
        assert_eq!(
            size_of::<InPortKey>(),
            field(|v: &InPortKey| &v.ip)
                + field(|v: &InPortKey| &v.port)
                + field(|v: &InPortKey| &v._pad)
        );
        assert_eq!(
            size_of::<DeliveryKey>(),
            field(|v: &DeliveryKey| &v.remote)
                + field(|v: &DeliveryKey| &v.local)
                + field(|v: &DeliveryKey| &v.remote_port)
                + field(|v: &DeliveryKey| &v.local_port)
        );
    }

    /// Sizes and alignments as the BPF maps are declared with them (`key_size`/`value_size`
    /// in the pinned maps; a restarted agent adopts maps of exactly these sizes).
    #[test]
    fn sizes_and_alignment() {
        assert_eq!((size_of::<IpAddr>(), align_of::<IpAddr>()), (20, 4));
        assert_eq!((size_of::<PodConfig>(), align_of::<PodConfig>()), (12, 4));
        assert_eq!(
            (size_of::<PodCounters>(), align_of::<PodCounters>()),
            (24, 8)
        );
        assert_eq!((size_of::<OrigDst>(), align_of::<OrigDst>()), (40, 8));
        assert_eq!((size_of::<ClientKey>(), align_of::<ClientKey>()), (16, 8));
        assert_eq!((size_of::<OutPortKey>(), align_of::<OutPortKey>()), (16, 8));
        assert_eq!((size_of::<InPortKey>(), align_of::<InPortKey>()), (28, 4));
        assert_eq!(
            (size_of::<DeliveryKey>(), align_of::<DeliveryKey>()),
            (44, 4)
        );
    }

    /// Field offsets: the kernel and the agent must find each field at the same byte.
    #[test]
    fn field_offsets() {
        assert_eq!(offset_of!(IpAddr, addr), 0);
        assert_eq!(offset_of!(IpAddr, family), 16);
        assert_eq!(offset_of!(IpAddr, _pad), 18);

        assert_eq!(offset_of!(PodConfig, outbound_port), 0);
        assert_eq!(offset_of!(PodConfig, flags), 2);
        assert_eq!(offset_of!(PodConfig, slot), 4);
        assert_eq!(offset_of!(PodConfig, max_pending), 8);

        assert_eq!(offset_of!(PodCounters, pending), 0);
        assert_eq!(offset_of!(PodCounters, refused_quota), 8);
        assert_eq!(offset_of!(PodCounters, refused_full), 16);

        assert_eq!(offset_of!(OrigDst, ip), 0);
        assert_eq!(offset_of!(OrigDst, port), 20);
        assert_eq!(offset_of!(OrigDst, _pad), 22);
        assert_eq!(offset_of!(OrigDst, stamp_ns), 24);
        assert_eq!(offset_of!(OrigDst, netns_cookie), 32);

        assert_eq!(offset_of!(ClientKey, netns_cookie), 0);
        assert_eq!(offset_of!(ClientKey, port), 8);
        assert_eq!(offset_of!(ClientKey, family), 10);
        assert_eq!(offset_of!(ClientKey, _pad), 12);

        assert_eq!(offset_of!(OutPortKey, netns_cookie), 0);
        assert_eq!(offset_of!(OutPortKey, port), 8);
        assert_eq!(offset_of!(OutPortKey, _pad), 10);

        assert_eq!(offset_of!(InPortKey, ip), 0);
        assert_eq!(offset_of!(InPortKey, port), 20);
        assert_eq!(offset_of!(InPortKey, _pad), 22);

        assert_eq!(offset_of!(DeliveryKey, remote), 0);
        assert_eq!(offset_of!(DeliveryKey, local), 20);
        assert_eq!(offset_of!(DeliveryKey, remote_port), 40);
        assert_eq!(offset_of!(DeliveryKey, local_port), 42);
    }

    fn bytes<T: Copy>(v: &T) -> std::vec::Vec<u8> {
        // SAFETY: the tests above prove these types have no padding, so every byte is
        // initialised.
        unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    /// Addresses are stored as the kernel hands them over (`user_ip4`, `local_ip4`,
    /// `user_ip6[]`: network byte order in memory), so `10.1.2.3` is the bytes 10, 1, 2, 3
    /// whatever the host's endianness; the family is a host-order integer.
    #[test]
    fn addresses_are_network_order_bytes() {
        let v4 = IpAddr {
            addr: [u32::from_ne_bytes([10, 1, 2, 3]), 0, 0, 0],
            family: AF_INET,
            _pad: 0,
        };
        let b = bytes(&v4);
        assert_eq!(&b[..4], &[10, 1, 2, 3]);
        assert_eq!(&b[4..16], &[0; 12]);
        assert_eq!(&b[16..18], &AF_INET.to_ne_bytes());
        assert_eq!(&b[18..20], &[0, 0]);

        // fd00::1:2, word by word as the kernel's user_ip6[0..4] / local_ip6[0..4] hold it.
        let o: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
        let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
        let v6 = IpAddr {
            addr: [w(0), w(4), w(8), w(12)],
            family: AF_INET6,
            _pad: 0,
        };
        assert_eq!(&bytes(&v6)[..16], &o);
        assert_eq!(
            (AF_INET, AF_INET6),
            (2, 10),
            "the kernel's AF_INET and AF_INET6"
        );
    }

    /// Ports are host byte order everywhere in these structs: connect4/6 store
    /// `u16::from_be(user_port)`, sock_ops stores `local_port` (host order) and the agent
    /// compares with `SocketAddr::port()`. Port 15001 is 0x3a99.
    #[test]
    fn ports_are_host_order() {
        let key = ClientKey {
            netns_cookie: 0x0102_0304_0506_0708,
            port: OUTBOUND_PORT,
            family: AF_INET,
            _pad: 0,
        };
        let b = bytes(&key);
        assert_eq!(&b[..8], &0x0102_0304_0506_0708u64.to_ne_bytes());
        assert_eq!(&b[8..10], &0x3a99u16.to_ne_bytes());
        assert_eq!(&b[10..12], &2u16.to_ne_bytes());

        let pod = PodConfig {
            outbound_port: OUTBOUND_PORT,
            flags: POD_FLAG_IPV6,
            slot: 0,
            max_pending: DEFAULT_MAX_PENDING,
        };
        assert_eq!(
            &bytes(&pod)[..4],
            &[0x3a99u16.to_ne_bytes(), 1u16.to_ne_bytes()].concat()[..]
        );
        // connect4 writes `user_port = outbound_port.to_be()`: network order on the wire.
        assert_eq!(pod.outbound_port.to_be().to_ne_bytes(), [0x3a, 0x99]);
    }

    /// Keys built by the kernel and by the agent for the same pod are equal byte for byte
    /// only if the padding is zero on both sides; `Default` gives zero padding.
    #[test]
    fn default_padding_is_zero() {
        assert!(bytes(&OrigDst::default()).iter().all(|&b| b == 0));
        assert!(bytes(&PodCounters::default()).iter().all(|&b| b == 0));
        assert!(bytes(&InPortKey::default()).iter().all(|&b| b == 0));
        assert!(bytes(&OutPortKey::default()).iter().all(|&b| b == 0));
        assert!(bytes(&ClientKey::default()).iter().all(|&b| b == 0));
        assert!(bytes(&DeliveryKey::default()).iter().all(|&b| b == 0));
    }

    /// The constants the programs and the agent agree on.
    #[test]
    fn agent_ports_and_names() {
        assert_eq!(AGENT_PORTS, [15001, 15006, 15008]);
        for name in [
            maps::PODS,
            maps::SOCK_DST,
            maps::ORIG_DST,
            maps::SKIP_OUT,
            maps::SKIP_IN,
            maps::LISTENERS,
            maps::POD_ADDRS,
            maps::PENDING,
            maps::DELIVERY,
            programs::CONNECT4,
            programs::CONNECT6,
            programs::SOCKOPS,
            programs::SK_LOOKUP,
            programs::SOCK_RELEASE,
        ] {
            // BPF_OBJ_NAME_LEN is 16 including the NUL: longer names are cut by the kernel
            // and `bpftool map show` / the agent's lookups by name would not match.
            assert!(name.len() <= 15, "{name} is longer than 15 bytes");
        }
    }
}
