//! The kernel programs meshd attaches, one [`Hook`] per program kind, and how each is
//! attached: cgroup hooks to a workload's cgroup, sk_lookup to its network namespace.

use std::{fs::File, os::fd::AsFd, path::Path};

use aya::programs::{
    links::{CgroupAttachMode, FdLink},
    CgroupSock, CgroupSockAddr, ProgramError, SkLookup, SockOps,
};
use meshd_common::programs as names;

use super::CaptureError;

/// The eBPF object built from `ebpf/meshd-ebpf` by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/meshd"));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `cgroup/connect4` on the workload's cgroup: outbound IPv4 capture.
    Connect4,
    /// `cgroup/connect6` on the workload's cgroup: outbound IPv6 capture.
    Connect6,
    /// `sockops` on the workload's cgroup: original destination by client port.
    SockOps,
    /// `sk_lookup` on the workload's network namespace: inbound capture. One program
    /// instance per workload, loaded with its namespace cookie ([`super::SkLookupInstance`]).
    SkLookup,
    /// `cgroup/sock_release` on the workload's cgroup: forgets the original destination of
    /// a socket closed before its SYN.
    SockRelease,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Connect4,
        Hook::Connect6,
        Hook::SockOps,
        Hook::SkLookup,
        Hook::SockRelease,
    ];

    /// Program name, as `bpftool prog show` prints it.
    pub fn program(self) -> &'static str {
        match self {
            Hook::Connect4 => names::CONNECT4,
            Hook::Connect6 => names::CONNECT6,
            Hook::SockOps => names::SOCKOPS,
            Hook::SkLookup => names::SK_LOOKUP,
            Hook::SockRelease => names::SOCK_RELEASE,
        }
    }

    /// File name of the pinned link in a workload's link directory.
    pub fn link_name(self) -> &'static str {
        match self {
            Hook::Connect4 => "connect4",
            Hook::Connect6 => "connect6",
            Hook::SockOps => "sockops",
            Hook::SkLookup => "sk_lookup",
            Hook::SockRelease => "sock_release",
        }
    }

    /// What the link is attached to, for messages.
    pub fn target_kind(self) -> &'static str {
        match self {
            Hook::SkLookup => "network namespace",
            _ => "cgroup",
        }
    }

    pub fn load(self, ebpf: &mut aya::Ebpf) -> Result<(), CaptureError> {
        let name = self.program();
        let prog = ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?;
        let err = |source| CaptureError::Program {
            program: name,
            source,
        };
        match self {
            Hook::Connect4 | Hook::Connect6 => {
                let p: &mut CgroupSockAddr = prog.try_into().map_err(err)?;
                p.load().map_err(err)
            }
            Hook::SockOps => {
                let p: &mut SockOps = prog.try_into().map_err(err)?;
                p.load().map_err(err)
            }
            Hook::SkLookup => {
                let p: &mut SkLookup = prog.try_into().map_err(err)?;
                p.load().map_err(err)
            }
            Hook::SockRelease => {
                let p: &mut CgroupSock = prog.try_into().map_err(err)?;
                p.load().map_err(err)
            }
        }
    }

    /// Pins the loaded program at `path`, replacing a pin left by an earlier agent.
    pub fn pin(self, ebpf: &mut aya::Ebpf, path: &Path) -> Result<(), CaptureError> {
        let name = self.program();
        if path.exists() {
            std::fs::remove_file(path).map_err(|source| CaptureError::Pin {
                path: path.to_owned(),
                reason: source.to_string(),
            })?;
        }
        let prog = ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?;
        prog.pin(path).map_err(|e| CaptureError::Pin {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Attaches the program to `target` (a cgroup directory or a netns file) and returns the
    /// link, ready to be pinned. Cgroup links always coexist with other programs on the same
    /// cgroup (the link API takes no ALLOW_MULTI flag), so other agents are not displaced.
    pub fn attach(self, ebpf: &mut aya::Ebpf, target: &File) -> Result<FdLink, CaptureError> {
        let name = self.program();
        let prog = ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?;
        let err = |source: ProgramError| CaptureError::Program {
            program: name,
            source,
        };
        let link: Result<FdLink, _> = match self {
            Hook::Connect4 | Hook::Connect6 => {
                let p: &mut CgroupSockAddr = prog.try_into().map_err(err)?;
                let id = p
                    .attach(target.as_fd(), CgroupAttachMode::Single)
                    .map_err(err)?;
                FdLink::try_from(p.take_link(id).map_err(err)?)
            }
            Hook::SockOps => {
                let p: &mut SockOps = prog.try_into().map_err(err)?;
                let id = p
                    .attach(target.as_fd(), CgroupAttachMode::Single)
                    .map_err(err)?;
                FdLink::try_from(p.take_link(id).map_err(err)?)
            }
            Hook::SkLookup => {
                let p: &mut SkLookup = prog.try_into().map_err(err)?;
                let id = p.attach(target.as_fd()).map_err(err)?;
                Ok(p.take_link(id).map_err(err)?.into())
            }
            Hook::SockRelease => {
                let p: &mut CgroupSock = prog.try_into().map_err(err)?;
                let id = p
                    .attach(target.as_fd(), CgroupAttachMode::Single)
                    .map_err(err)?;
                FdLink::try_from(p.take_link(id).map_err(err)?)
            }
        };
        link.map_err(|e| CaptureError::NotALink {
            program: name,
            reason: e.to_string(),
        })
    }

    /// The loaded program's fd, to update adopted links with.
    pub fn prog_fd(self, ebpf: &aya::Ebpf) -> Result<std::os::fd::BorrowedFd<'_>, CaptureError> {
        let name = self.program();
        let prog = ebpf
            .program(name)
            .ok_or(CaptureError::MissingProgram(name))?;
        let fd = prog.fd().map_err(|source| CaptureError::Program {
            program: name,
            source,
        })?;
        Ok(fd.as_fd())
    }
}
