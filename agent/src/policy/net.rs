//! Networks: a CIDR (or a bare address) with the sub-networks it excepts, as
//! `NetworkAuthentication`, `ServerAuthorization` and the cluster and probe network settings
//! write them.

use std::net::IpAddr;

use serde::Serialize;

/// An address prefix. Host bits are allowed and dropped (`10.0.0.1/24` is `10.0.0.0/24`);
/// a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or `ADDR`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 3 {
                    return None;
                }
                (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?))
            }
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        Some(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    pub fn all_v4() -> Cidr {
        Cidr {
            addr: IpAddr::from([0u8; 4]),
            prefix: 0,
        }
    }

    pub fn all_v6() -> Cidr {
        Cidr {
            addr: IpAddr::from([0u16; 8]),
            prefix: 0,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    /// Whether every address of `other` is in `self`.
    pub fn contains_net(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::from((bits & m).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::from((bits & m).to_be_bytes())
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A network a client's address must be in, and not in any of its exceptions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub net: Cidr,
    pub except: Vec<Cidr>,
}

impl Network {
    pub fn new(net: Cidr) -> Network {
        Network {
            net,
            except: Vec::new(),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }

    /// Every IPv4 and IPv6 address.
    pub fn everywhere() -> Vec<Network> {
        vec![Network::new(Cidr::all_v4()), Network::new(Cidr::all_v6())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.1/24").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/24");
        assert!(c.contains(ip("10.0.0.200")) && !c.contains(ip("10.0.1.1")));
        assert!(
            c.contains(ip("::ffff:10.0.0.7")),
            "an IPv4-mapped client address"
        );
        assert_eq!(Cidr::parse("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(Cidr::parse("fd00::1/8").unwrap().to_string(), "fd00::/8");
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "x",
            "10.0.0.0/-1",
            "::/129",
            "10.0.0.0/ 8",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
        assert!(Cidr::all_v4().contains(ip("203.0.113.7")) && !Cidr::all_v4().contains(ip("::1")));
        let big = Cidr::parse("10.1.0.0/16").unwrap();
        let small = Cidr::parse("10.1.1.0/24").unwrap();
        assert!(big.contains_net(&small) && !small.contains_net(&big));
    }

    #[test]
    fn except() {
        let n = Network {
            net: Cidr::parse("10.42.0.0/16").unwrap(),
            except: vec![Cidr::parse("10.42.3.0/24").unwrap()],
        };
        assert!(n.contains(ip("10.42.1.10")));
        assert!(!n.contains(ip("10.42.3.30")));
        assert!(!n.contains(ip("203.0.113.7")));
    }
}
