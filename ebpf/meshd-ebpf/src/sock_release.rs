//! `cgroup/sock_release`: when an enrolled pod's socket is released (its last file
//! descriptor closed), forgets the socket's `MESHD_SOCK_DST` entry, if it still has one, and
//! uncounts it from the pod's quota. sock_ops forgets the entries of connections that sent a
//! SYN and closed; this is for a connect() that failed before its SYN (e.g. bound with
//! `SO_BINDTODEVICE` to a device with no route to the rewritten loopback destination):
//! no such connect leaves an entry behind.
//!
//! Attached to each enrolled pod's cgroup (kernel 5.9+).

use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::cgroup_sock, programs::SockContext};

use crate::capture::forget_socket;

#[cgroup_sock(sock_release)]
pub fn meshd_release(ctx: SockContext) -> i32 {
    forget_socket(unsafe { bpf_get_socket_cookie(ctx.sock.cast()) });
    1
}
