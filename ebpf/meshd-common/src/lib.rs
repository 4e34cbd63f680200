//! Types shared between meshd's eBPF programs and the agent.
//!
//! Every struct here is `#[repr(C)]`, has no implicit padding and is used as a map key or
//! value on both sides, so the layout is part of the pinned-map ABI: changing it means
//! bumping [`PIN_VERSION`].
#![no_std]

/// Version of the bpffs layout (`/sys/fs/bpf/meshd/v<N>`), bumped on any map ABI change.
pub const PIN_VERSION: u32 = 1;

/// Port of the agent's outbound listener inside each enrolled pod (on loopback).
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the agent's inbound plaintext listener inside each enrolled pod.
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
}

/// Program names (the Rust function names in `meshd-ebpf`, at most 15 bytes).
pub mod programs {
    pub const CONNECT4: &str = "meshd_connect4";
    pub const CONNECT6: &str = "meshd_connect6";
    pub const SOCKOPS: &str = "meshd_sockops";
    pub const SK_LOOKUP: &str = "meshd_sk_lookup";
}

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
    pub _pad: u32,
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
    pub _pad: [u16; 3],
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

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), plain integers, without implicit padding.
    unsafe impl aya::Pod for IpAddr {}
    unsafe impl aya::Pod for PodConfig {}
    unsafe impl aya::Pod for OrigDst {}
    unsafe impl aya::Pod for ClientKey {}
    unsafe impl aya::Pod for OutPortKey {}
    unsafe impl aya::Pod for InPortKey {}
}
