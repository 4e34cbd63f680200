//! Just enough rtnetlink to add and delete one policy rule and one route: the messages are
//! written by hand (a few fixed headers and attributes) rather than pulling in a netlink
//! crate for two requests made once per pod.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
};

// <linux/netlink.h>, <linux/rtnetlink.h>, <linux/fib_rules.h>
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RT_TABLE_UNSPEC: u8 = 0;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const FR_ACT_TO_TBL: u8 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
/// `lo` is the first device of every network namespace (the kernel's `LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// Address family of a rule or route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// `fwmark MARK/MARK lookup TABLE pref PRIORITY`.
#[derive(Debug, Clone, Copy)]
pub(super) struct MarkRule {
    pub family: Family,
    pub mark: u32,
    pub table: u32,
    pub priority: u32,
}

/// `local 0.0.0.0/0 dev lo table TABLE` (or `::/0`): everything looked up in `table` is
/// delivered locally.
#[derive(Debug, Clone, Copy)]
pub(super) struct LocalDefaultRoute {
    pub family: Family,
    pub table: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    /// Add; one that exists already is fine.
    Add,
    /// Delete; one that is not there is fine.
    Delete,
}

fn attr(buf: &mut Vec<u8>, ty: u16, value: u32) {
    buf.extend_from_slice(&8u16.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&value.to_ne_bytes());
}

fn message(ty: u16, op: Op, seq: u32, body: &[u8]) -> Vec<u8> {
    let flags = match op {
        Op::Add => NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        Op::Delete => NLM_F_REQUEST | NLM_F_ACK,
    };
    let len = 16 + body.len() as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

impl MarkRule {
    pub(super) fn encode(&self, op: Op, seq: u32) -> Vec<u8> {
        // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action;
        // then four zero bytes, as iproute2 sends it (it writes a `struct rtmsg`, whose
        // first eight bytes are the same): IPv6 rules are refused (EINVAL) without them
        // on 6.18, IPv4 ones take either.
        let mut body = vec![
            self.family.af(),
            0,
            0,
            0,
            RT_TABLE_UNSPEC,
            0,
            0,
            FR_ACT_TO_TBL,
        ];
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut body, FRA_PRIORITY, self.priority);
        attr(&mut body, FRA_FWMARK, self.mark);
        attr(&mut body, FRA_FWMASK, self.mark);
        attr(&mut body, FRA_TABLE, self.table);
        let ty = match op {
            Op::Add => RTM_NEWRULE,
            Op::Delete => RTM_DELRULE,
        };
        message(ty, op, seq, &body)
    }
}

impl LocalDefaultRoute {
    pub(super) fn encode(&self, op: Op, seq: u32) -> Vec<u8> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let mut body = vec![
            self.family.af(),
            0,
            0,
            0,
            RT_TABLE_UNSPEC,
            RTPROT_STATIC,
            RT_SCOPE_HOST,
            RTN_LOCAL,
        ];
        body.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut body, RTA_TABLE, self.table);
        attr(&mut body, RTA_OIF, LOOPBACK_IFINDEX);
        let ty = match op {
            Op::Add => RTM_NEWROUTE,
            Op::Delete => RTM_DELROUTE,
        };
        message(ty, op, seq, &body)
    }
}

/// Sends one request on a `NETLINK_ROUTE` socket and waits for its acknowledgement.
/// `EEXIST` on an add and `ENOENT`/`ESRCH` on a delete count as done.
pub(super) fn request(sock: &OwnedFd, msg: &[u8], op: Op) -> io::Result<()> {
    // SAFETY: a valid socket and a buffer of the given length.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let seq = u32::from_ne_bytes([msg[8], msg[9], msg[10], msg[11]]);
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: a valid socket and a buffer of the given length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        match ack(&buf[..n as usize], seq)? {
            Some(0) => return Ok(()),
            Some(errno) => {
                let done = match op {
                    Op::Add => errno == libc::EEXIST,
                    Op::Delete => errno == libc::ENOENT || errno == libc::ESRCH,
                };
                return if done {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(errno))
                };
            }
            None => continue,
        }
    }
}

/// The errno of the `NLMSG_ERROR` answering `seq` in `buf` (0 is an acknowledgement), or
/// `None` when `buf` holds no answer to it.
fn ack(mut buf: &[u8], seq: u32) -> io::Result<Option<i32>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "truncated netlink message");
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return Err(bad());
        }
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if ty == NLMSG_ERROR && msg_seq == seq {
            let e = buf.get(16..20).ok_or_else(bad)?;
            let code = i32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
            return Ok(Some(-code));
        }
        let next = ((len + 3) & !3).min(buf.len());
        buf = &buf[next..];
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `ip rule add fwmark 0x3a9e/0x3a9e lookup 15006 pref 15006` sends (checked
    /// against `strace -x ip rule add ...`): header, fib_rule_hdr and four zero bytes, four
    /// u32 attributes.
    #[test]
    fn a_mark_rule_is_encoded_as_iproute2_does() {
        let rule = MarkRule {
            family: Family::V4,
            mark: 0x3a9e,
            table: 15006,
            priority: 15006,
        };
        let m = rule.encode(Op::Add, 7);
        assert_eq!(m.len(), 16 + 12 + 4 * 8);
        assert_eq!(&m[0..4], &(m.len() as u32).to_ne_bytes());
        assert_eq!(&m[4..6], &RTM_NEWRULE.to_ne_bytes());
        assert_eq!(&m[8..12], &7u32.to_ne_bytes());
        assert_eq!(&m[16..28], &[2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]);
        // FRA_PRIORITY, FRA_FWMARK, FRA_FWMASK, FRA_TABLE.
        for (i, (ty, v)) in [(6u16, 15006u32), (10, 0x3a9e), (16, 0x3a9e), (15, 15006)]
            .into_iter()
            .enumerate()
        {
            let a = &m[28 + i * 8..36 + i * 8];
            assert_eq!(&a[0..2], &8u16.to_ne_bytes());
            assert_eq!(&a[2..4], &ty.to_ne_bytes());
            assert_eq!(&a[4..8], &v.to_ne_bytes());
        }
    }

    #[test]
    fn a_local_default_route_is_a_host_scoped_local_route_on_lo() {
        let m = LocalDefaultRoute {
            family: Family::V6,
            table: 15006,
        }
        .encode(Op::Delete, 1);
        assert_eq!(&m[4..6], &RTM_DELROUTE.to_ne_bytes());
        assert_eq!(&m[16..24], &[10, 0, 0, 0, 0, RTPROT_STATIC, 254, 2]);
        assert_eq!(m.len(), 16 + 12 + 16);
    }

    #[test]
    fn acknowledgements_are_read_by_sequence() {
        let mut err = message(NLMSG_ERROR, Op::Delete, 9, &(-libc::EEXIST).to_ne_bytes());
        err.extend_from_slice(&[0; 16]);
        let len = err.len() as u32;
        err[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(ack(&err, 9).unwrap(), Some(libc::EEXIST));
        assert_eq!(ack(&err, 8).unwrap(), None);
        assert!(ack(&err[..10], 9).unwrap().is_none());
        let mut short = err.clone();
        short[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(ack(&short, 9).is_err());
    }
}
