//! Typed access to the pinned maps the programs share with the agent.

use std::{
    net::IpAddr as StdIpAddr,
    os::fd::RawFd,
    sync::{Mutex, MutexGuard},
};

use aya::maps::{HashMap, Map, MapData, MapError, SockHash};
use meshd_common::{
    maps as names, ClientKey, DeliveryKey, InPortKey, IpAddr, OrigDst, OutPortKey, PodConfig,
    AF_INET, AF_INET6,
};

use super::CaptureError;

type Hash<K, V> = Mutex<HashMap<MapData, K, V>>;

/// The maps, each behind its own lock so the accept path never waits for enrollment.
pub struct Maps {
    pods: Hash<u64, PodConfig>,
    sock_dst: Hash<u64, OrigDst>,
    orig_dst: Hash<ClientKey, OrigDst>,
    skip_out: Hash<OutPortKey, u8>,
    skip_in: Hash<InPortKey, u8>,
    listeners: Mutex<SockHash<MapData, IpAddr>>,
    pod_addrs: Hash<IpAddr, u64>,
    delivery: Hash<DeliveryKey, u8>,
}

fn take(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<Map, CaptureError> {
    ebpf.take_map(name).ok_or(CaptureError::MissingMap(name))
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
) -> Result<Mutex<T>, CaptureError> {
    let map = take(ebpf, name)?;
    T::try_from(map)
        .map(Mutex::new)
        .map_err(|source| CaptureError::Map { map: name, source })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Ignores "no such entry" on delete: removing what is already gone is fine.
fn removed(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

pub fn ip_key(ip: StdIpAddr) -> IpAddr {
    match ip {
        StdIpAddr::V4(v4) => IpAddr {
            addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
            family: AF_INET,
            _pad: 0,
        },
        StdIpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            IpAddr {
                addr: [w(0), w(4), w(8), w(12)],
                family: AF_INET6,
                _pad: 0,
            }
        }
    }
}

fn delivery_key(from: std::net::SocketAddr, to: std::net::SocketAddr) -> DeliveryKey {
    DeliveryKey {
        remote: ip_key(from.ip().to_canonical()),
        local: ip_key(to.ip().to_canonical()),
        remote_port: from.port(),
        local_port: to.port(),
    }
}

pub fn std_ip(ip: &IpAddr) -> StdIpAddr {
    if ip.family == AF_INET6 {
        let mut o = [0u8; 16];
        for (i, w) in ip.addr.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        StdIpAddr::from(o)
    } else {
        StdIpAddr::from(ip.addr[0].to_ne_bytes())
    }
}

impl Maps {
    pub fn take_from(ebpf: &mut aya::Ebpf) -> Result<Maps, CaptureError> {
        Ok(Maps {
            pods: typed(ebpf, names::PODS)?,
            sock_dst: typed(ebpf, names::SOCK_DST)?,
            orig_dst: typed(ebpf, names::ORIG_DST)?,
            skip_out: typed(ebpf, names::SKIP_OUT)?,
            skip_in: typed(ebpf, names::SKIP_IN)?,
            listeners: typed(ebpf, names::LISTENERS)?,
            pod_addrs: typed(ebpf, names::POD_ADDRS)?,
            delivery: typed(ebpf, names::DELIVERY)?,
        })
    }

    /// Takes the original destination recorded for a connection the outbound listener
    /// accepted from `client_port` in the namespace with `netns_cookie`.
    pub fn take_orig_dst(&self, netns_cookie: u64, client_port: u16, v6: bool) -> Option<OrigDst> {
        let key = ClientKey {
            netns_cookie,
            port: client_port,
            family: if v6 { AF_INET6 } else { AF_INET },
            _pad: 0,
        };
        let mut map = lock(&self.orig_dst);
        let dst = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(dst)
    }

    /// Announces a delivery the agent is about to open from `from` (the client's address
    /// and the port the agent bound) to `to` (the pod's address and port), so that
    /// sk_lookup leaves its SYN to the app's listener; until [`Maps::end_delivery`].
    pub fn begin_delivery(
        &self,
        from: std::net::SocketAddr,
        to: std::net::SocketAddr,
    ) -> Result<(), MapError> {
        lock(&self.delivery).insert(delivery_key(from, to), 1, 0)
    }

    /// Forgets a delivery announced by [`Maps::begin_delivery`] once its connect returned.
    pub fn end_delivery(&self, from: std::net::SocketAddr, to: std::net::SocketAddr) {
        if let Err(e) = removed(lock(&self.delivery).remove(&delivery_key(from, to))) {
            tracing::warn!(%from, %to, error = %e, "cannot remove a delivery entry");
        }
    }

    /// Removes every delivery entry: an agent that was killed during a connect leaves its
    /// entry behind; the next one starts with none.
    pub fn clear_deliveries(&self) -> Result<(), MapError> {
        let mut map = lock(&self.delivery);
        let keys: Vec<DeliveryKey> = map.keys().filter_map(Result::ok).collect();
        for key in keys {
            removed(map.remove(&key))?;
        }
        Ok(())
    }

    pub fn set_pod(&self, netns_cookie: u64, pod: PodConfig) -> Result<(), CaptureError> {
        lock(&self.pods)
            .insert(netns_cookie, pod, 0)
            .map_err(|source| CaptureError::Map {
                map: names::PODS,
                source,
            })
    }

    pub fn set_skip_out(&self, netns_cookie: u64, ports: &[u16]) -> Result<(), CaptureError> {
        let mut map = lock(&self.skip_out);
        for &port in ports {
            let key = OutPortKey {
                netns_cookie,
                port,
                _pad: [0; 3],
            };
            map.insert(key, 1, 0).map_err(|source| CaptureError::Map {
                map: names::SKIP_OUT,
                source,
            })?;
        }
        Ok(())
    }

    pub fn set_skip_in(&self, ips: &[StdIpAddr], ports: &[u16]) -> Result<(), CaptureError> {
        let mut map = lock(&self.skip_in);
        for ip in ips {
            for &port in ports {
                let key = InPortKey {
                    ip: ip_key(*ip),
                    port,
                    _pad: [0; 3],
                };
                map.insert(key, 1, 0).map_err(|source| CaptureError::Map {
                    map: names::SKIP_IN,
                    source,
                })?;
            }
        }
        Ok(())
    }

    pub fn set_listener(&self, ip: StdIpAddr, listener: RawFd) -> Result<(), CaptureError> {
        lock(&self.listeners)
            .insert(ip_key(ip), listener, 0)
            .map_err(|source| CaptureError::Map {
                map: names::LISTENERS,
                source,
            })
    }

    /// Marks a pod's addresses as enrolled (their namespace is `netns_cookie`): from then on
    /// sk_lookup refuses connections to them while their listener is missing.
    pub fn set_pod_addrs(&self, netns_cookie: u64, ips: &[StdIpAddr]) -> Result<(), CaptureError> {
        let mut map = lock(&self.pod_addrs);
        for ip in ips {
            map.insert(ip_key(*ip), netns_cookie, 0)
                .map_err(|source| CaptureError::Map {
                    map: names::POD_ADDRS,
                    source,
                })?;
        }
        Ok(())
    }

    /// Removes every entry that belongs to a pod: its config, addresses, skip ports, listeners and any
    /// original destinations still recorded for its connections.
    pub fn remove_pod(&self, netns_cookie: u64, ips: &[StdIpAddr]) -> Result<(), CaptureError> {
        let ips: Vec<IpAddr> = ips.iter().map(|ip| ip_key(*ip)).collect();
        self.retain(|c| c != netns_cookie, |ip| !ips.contains(ip))
    }

    /// Keeps only the entries whose namespace cookie and pod address pass the filters.
    pub fn retain(
        &self,
        keep_cookie: impl Fn(u64) -> bool,
        keep_ip: impl Fn(&IpAddr) -> bool,
    ) -> Result<(), CaptureError> {
        let err = |map| move |source| CaptureError::Map { map, source };
        {
            let mut map = lock(&self.pods);
            let stale: Vec<u64> = map.keys().flatten().filter(|c| !keep_cookie(*c)).collect();
            for k in stale {
                removed(map.remove(&k)).map_err(err(names::PODS))?;
            }
        }
        {
            let mut map = lock(&self.skip_out);
            let stale: Vec<_> = map
                .keys()
                .flatten()
                .filter(|k| !keep_cookie(k.netns_cookie))
                .collect();
            for k in stale {
                removed(map.remove(&k)).map_err(err(names::SKIP_OUT))?;
            }
        }
        {
            let mut map = lock(&self.skip_in);
            let stale: Vec<_> = map.keys().flatten().filter(|k| !keep_ip(&k.ip)).collect();
            for k in stale {
                removed(map.remove(&k)).map_err(err(names::SKIP_IN))?;
            }
        }
        {
            let mut map = lock(&self.listeners);
            let stale: Vec<_> = map.keys().flatten().filter(|k| !keep_ip(k)).collect();
            for k in stale {
                removed(map.remove(&k)).map_err(err(names::LISTENERS))?;
            }
        }
        {
            let mut map = lock(&self.pod_addrs);
            let stale: Vec<_> = map.keys().flatten().filter(|k| !keep_ip(k)).collect();
            for k in stale {
                removed(map.remove(&k)).map_err(err(names::POD_ADDRS))?;
            }
        }
        {
            let mut map = lock(&self.orig_dst);
            let stale: Vec<_> = map
                .keys()
                .flatten()
                .filter(|k| !keep_cookie(k.netns_cookie))
                .collect();
            for k in stale {
                removed(map.remove(&k)).map_err(err(names::ORIG_DST))?;
            }
        }
        let mut map = lock(&self.sock_dst);
        let stale: Vec<u64> = map
            .iter()
            .flatten()
            .filter(|(_, v)| !keep_cookie(v.netns_cookie))
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            removed(map.remove(&k)).map_err(err(names::SOCK_DST))?;
        }
        Ok(())
    }

    /// Records an original destination as sock_ops would, for unit tests that drive the
    /// outbound proxy without the programs.
    #[cfg(test)]
    pub fn record_orig_dst(
        &self,
        netns_cookie: u64,
        client_port: u16,
        dst: std::net::SocketAddr,
    ) -> Result<(), MapError> {
        let key = ClientKey {
            netns_cookie,
            port: client_port,
            family: if dst.is_ipv6() { AF_INET6 } else { AF_INET },
            _pad: 0,
        };
        let value = OrigDst {
            ip: ip_key(dst.ip()),
            port: dst.port(),
            _pad: [0; 5],
            netns_cookie,
        };
        lock(&self.orig_dst).insert(key, value, 0)
    }

    /// Maps of the right shapes that no program uses and nothing pins (they go away with
    /// the process), for unit tests that need a [`crate::proxy::ProxyContext`]. Needs
    /// CAP_BPF (the suite runs as root).
    #[cfg(test)]
    pub fn standalone() -> Result<Maps, MapError> {
        fn hash<K: aya::Pod, V: aya::Pod>() -> Result<Hash<K, V>, MapError> {
            HashMap::create(64, 0).map(Mutex::new)
        }
        const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
        let obj = aya_obj::Map::new_from_params(
            BPF_MAP_TYPE_SOCKHASH,
            std::mem::size_of::<IpAddr>() as u32,
            std::mem::size_of::<u32>() as u32,
            64,
            0,
        );
        let listeners = MapData::create(obj, "test_listeners", None)?;
        Ok(Maps {
            pods: hash()?,
            sock_dst: hash()?,
            orig_dst: hash()?,
            skip_out: hash()?,
            skip_in: hash()?,
            listeners: Mutex::new(SockHash::try_from(Map::SockHash(listeners))?),
            pod_addrs: hash()?,
            delivery: hash()?,
        })
    }

    /// Entry counts per map, for `/config_dump` and tests.
    pub fn counts(&self) -> serde_json::Value {
        serde_json::json!({
            names::PODS: lock(&self.pods).keys().count(),
            names::SOCK_DST: lock(&self.sock_dst).keys().count(),
            names::ORIG_DST: lock(&self.orig_dst).keys().count(),
            names::SKIP_OUT: lock(&self.skip_out).keys().count(),
            names::SKIP_IN: lock(&self.skip_in).keys().count(),
            names::LISTENERS: lock(&self.listeners).keys().count(),
            names::POD_ADDRS: lock(&self.pod_addrs).keys().count(),
            names::DELIVERY: lock(&self.delivery).keys().count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_keys_round_trip_in_network_order() {
        for ip in ["10.244.1.2", "fd00::1:2"] {
            let ip: StdIpAddr = ip.parse().unwrap();
            assert_eq!(std_ip(&ip_key(ip)), ip);
        }
        // The kernel's user_ip4/local_ip4 is the address in network byte order.
        let k = ip_key("10.0.0.1".parse().unwrap());
        assert_eq!(k.addr[0].to_ne_bytes(), [10, 0, 0, 1]);
    }
}
