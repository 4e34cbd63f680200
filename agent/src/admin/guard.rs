//! What the admin server refuses before it routes a request: a `Host` that is not the
//! admin address (DNS rebinding: a web page on the node must not reach the API through a
//! name it controls), a request body over [`MAX_BODY`], and a tap beyond [`MAX_TAPS`] open at
//! once. Each refusal is an error that says what is wrong; the server turns it into a
//! status and that text.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

/// The largest request body the admin API reads (`PUT /log-level` takes a filter).
pub(super) const MAX_BODY: usize = 16 * 1024;
/// At most this many taps stream at once; each gets every request event of the node.
pub(super) const MAX_TAPS: usize = 16;
/// How long a client may take to send a request head (HTTP/1; hyper needs a timer for it).
pub(super) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum Refused {
    #[error("Host {host:?} is not allowed: the admin API answers only requests addressed to localhost, a loopback address or its own address {admin} (DNS rebinding protection)")]
    Host { host: String, admin: SocketAddr },
    #[error("request body over {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("{MAX_TAPS} taps are open already; close one and retry")]
    TooManyTaps,
}

/// Whether a request with this `Host` (or HTTP/2 `:authority`) may use the API of an admin
/// server on `admin`. Allowed: no `Host` at all (not a browser), `localhost`, a loopback
/// address, the admin address's own IP, and, when the admin listens on every address
/// (`0.0.0.0`, `::`, allowed only explicitly), any IP literal: DNS rebinding needs a name.
pub(super) fn check_host(host: Option<&str>, admin: SocketAddr) -> Result<(), Refused> {
    let Some(host) = host else {
        return Ok(());
    };
    let refused = || Refused::Host {
        host: host.to_string(),
        admin,
    };
    let name = strip_port(host).ok_or_else(refused)?;
    if name.eq_ignore_ascii_case("localhost") || name.eq_ignore_ascii_case("localhost.") {
        return Ok(());
    }
    let ip: IpAddr = name.parse().map_err(|_| refused())?;
    let ip = ip.to_canonical();
    if ip.is_loopback() || ip == admin.ip().to_canonical() || admin.ip().is_unspecified() {
        Ok(())
    } else {
        Err(refused())
    }
}

/// The host part of `host[:port]` or `[v6][:port]`; `None` if the port is not a number or
/// the brackets do not close.
fn strip_port(host: &str) -> Option<&str> {
    let port_ok = |p: &str| p.is_empty() || p.parse::<u16>().is_ok();
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) if port_ok(port) => Some(ip),
            None if after.is_empty() => Some(ip),
            _ => None,
        };
    }
    match host.split_once(':') {
        Some((name, port)) if port_ok(port) => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

/// Counts open taps; a [`TapSlot`] is one of them until it is dropped.
#[derive(Debug, Default)]
pub(super) struct TapSlots {
    open: Arc<AtomicUsize>,
}

/// One open tap; frees its place when dropped (the tap's stream ended).
#[derive(Debug)]
pub(super) struct TapSlot {
    open: Arc<AtomicUsize>,
}

impl TapSlots {
    /// A place for one more tap, unless [`MAX_TAPS`] are open.
    pub(super) fn take(&self) -> Result<TapSlot, Refused> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_TAPS).then_some(n + 1)
            })
            .map_err(|_| Refused::TooManyTaps)?;
        Ok(TapSlot {
            open: self.open.clone(),
        })
    }

    #[cfg(test)]
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for TapSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: &str = "127.0.0.1:15000";

    fn allowed(host: &str, admin: &str) -> bool {
        check_host(Some(host), admin.parse().unwrap()).is_ok()
    }

    #[test]
    fn loopback_names_and_addresses_are_allowed() {
        for host in [
            "localhost",
            "LocalHost:15000",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:15000",
            "127.1.2.3:80",
            "[::1]:15000",
            "[::1]",
            "[::ffff:127.0.0.1]:15000",
        ] {
            assert!(allowed(host, LOOPBACK), "{host}");
        }
        assert!(check_host(None, LOOPBACK.parse().unwrap()).is_ok());
    }

    /// Review case G103: a name the attacker controls (DNS rebinding) is refused.
    #[test]
    fn other_names_and_addresses_are_refused_with_the_reason() {
        for host in [
            "attacker.example",
            "attacker.example:15000",
            "localhost.attacker.example",
            "10.0.0.1:15000",
            "127.0.0.1:notaport",
            "[::1",
            "",
        ] {
            assert!(!allowed(host, LOOPBACK), "{host}");
        }
        let err = check_host(Some("attacker.example"), LOOPBACK.parse().unwrap())
            .expect_err("refused")
            .to_string();
        assert!(err.contains("\"attacker.example\""), "{err}");
        assert!(err.contains("DNS rebinding"), "{err}");
    }

    #[test]
    fn the_configured_address_is_allowed() {
        assert!(allowed("10.0.0.1:15000", "10.0.0.1:15000"));
        assert!(!allowed("10.0.0.2:15000", "10.0.0.1:15000"));
        assert!(!allowed("node.example:15000", "10.0.0.1:15000"));
        // Listening everywhere: any address, still no name.
        assert!(allowed("10.0.0.2:15000", "0.0.0.0:15000"));
        assert!(allowed("[fd00::2]:15000", "[::]:15000"));
        assert!(!allowed("node.example:15000", "0.0.0.0:15000"));
    }

    #[test]
    fn taps_are_limited_and_slots_come_back() {
        let slots = TapSlots::default();
        let taken: Vec<TapSlot> = (0..MAX_TAPS)
            .map(|_| slots.take().expect("a place"))
            .collect();
        assert_eq!(slots.take().expect_err("full"), Refused::TooManyTaps);
        assert_eq!(slots.open(), MAX_TAPS);
        drop(taken);
        assert_eq!(slots.open(), 0);
        assert!(slots.take().is_ok());
    }
}
