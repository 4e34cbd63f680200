//! The BPF commands aya 0.14 does not expose: opening a pinned link, pointing an existing
//! link at a new program (`BPF_LINK_UPDATE`, kernel 5.7+) and reading what a link is
//! attached to. Together they let a restarted agent adopt the links it pinned and run its
//! own freshly loaded programs in them, without a moment in which the pod is not captured,
//! and tell a link whose cgroup or namespace is gone (the pod was deleted or recreated while
//! no agent ran) from one that still captures the pod.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_CGROUP: u32 = 3;
const BPF_LINK_TYPE_NETNS: u32 = 5;

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    /// Explicit, zeroed: the kernel rejects a bpf_attr with non-zero bytes past the fields
    /// it knows, and implicit padding would be uninitialised.
    _pad: u32,
}

#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
struct InfoByFdAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, initialised bpf_attr prefix of the size we pass.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned BPF object (here: a link) and returns its fd.
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program of the link pinned at `path` with `prog`.
pub fn update_pinned(path: &Path, prog: BorrowedFd<'_>) -> io::Result<()> {
    let link = open_pinned(path)?;
    let mut attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

/// What a link is attached to, as the kernel reports it (`bpf_link_info`). A link whose
/// cgroup or namespace is gone reports id 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTarget {
    /// The cgroup's id (its inode number on cgroup v2).
    Cgroup(u64),
    /// The network namespace's inode number.
    Netns(u32),
    /// Another kind of link (not one of meshd's).
    Other(u32),
}

/// What the link pinned at `path` is attached to.
pub fn pinned_target(path: &Path) -> io::Result<LinkTarget> {
    let link = open_pinned(path)?;
    // `struct bpf_link_info`: type, id, prog_id, then (8-aligned, at 16) the union whose
    // `cgroup` is { u64 cgroup_id; u32 attach_type } and `netns` { u32 netns_ino; ... }.
    let mut info = [0u64; 8];
    let mut attr = InfoByFdAttr {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let link_type = info[0] as u32;
    Ok(match link_type {
        BPF_LINK_TYPE_CGROUP => LinkTarget::Cgroup(info[2]),
        BPF_LINK_TYPE_NETNS => LinkTarget::Netns(info[2] as u32),
        other => LinkTarget::Other(other),
    })
}
