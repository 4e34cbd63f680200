//! Typed access to the pinned maps the programs share with the agent.

use std::{
    collections::BTreeMap,
    net::IpAddr as StdIpAddr,
    os::fd::RawFd,
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use aya::maps::{HashMap, Map, MapData, MapError, SockHash};
use meshd_common::{
    maps as names, ClientKey, DeliveryKey, InPortKey, IpAddr, OrigDst, OutPortKey, PodConfig,
    PodCounters, AF_INET, AF_INET6,
};

use super::{counters::Counters, CaptureError};

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
    /// `MESHD_PENDING`, memory-mapped.
    pending: Counters,
    /// Each enrolled pod's slot in `MESHD_PENDING`, by network namespace cookie (what
    /// `MESHD_PODS` says, kept here so the accept path needs no map lookup).
    slots: Mutex<BTreeMap<u64, u32>>,
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

/// Maps `MESHD_PENDING` into memory.
fn counters(map: Map, slots: u32) -> Result<Counters, CaptureError> {
    let Map::Array(data) = map else {
        return Err(CaptureError::Map {
            map: names::PENDING,
            source: MapError::InvalidMapType { map_type: 0 },
        });
    };
    Counters::map(data.fd(), slots).map_err(|e| CaptureError::Map {
        map: names::PENDING,
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "mmap",
            io_error: e,
        }),
    })
}

/// `CLOCK_MONOTONIC`, as `bpf_ktime_get_ns` reads it.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Maps {
    pub fn take_from(ebpf: &mut aya::Ebpf) -> Result<Maps, CaptureError> {
        let pending = counters(take(ebpf, names::PENDING)?, super::counters::SLOTS)?;
        let pods: Hash<u64, PodConfig> = typed(ebpf, names::PODS)?;
        // Slots an earlier agent gave the pods it enrolled (their counters count entries
        // that are still in the maps).
        let slots = lock(&pods)
            .iter()
            .flatten()
            .map(|(cookie, pod)| (cookie, pod.slot))
            .collect();
        Ok(Maps {
            pending,
            slots: Mutex::new(slots),
            pods,
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
        // Only the one that removed it (not a concurrent sweep) uncounts it.
        if map.remove(&key).is_ok() {
            self.release_one(netns_cookie);
        }
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

    fn release_one(&self, netns_cookie: u64) {
        if let Some(slot) = lock(&self.slots).get(&netns_cookie) {
            self.pending.release_one(*slot);
        }
    }

    /// Removes the `MESHD_ORIG_DST` entries older than `max_age`: connections the agent
    /// never accepted (it died with a backlog, or the client's final ACK was lost), so
    /// they no longer count against their pod's quota. Returns how many.
    pub fn sweep_orig_dst(&self, max_age: Duration) -> Result<u64, CaptureError> {
        let cutoff = monotonic_ns().saturating_sub(max_age.as_nanos() as u64);
        let mut map = lock(&self.orig_dst);
        let stale: Vec<(ClientKey, u64)> = map
            .iter()
            .flatten()
            .filter(|(_, v)| v.stamp_ns < cutoff)
            .map(|(k, v)| (k, v.netns_cookie))
            .collect();
        let mut swept = 0;
        for (key, cookie) in stale {
            match map.remove(&key) {
                Ok(()) => {
                    swept += 1;
                    self.release_one(cookie);
                }
                Err(e) => removed(Err(e)).map_err(|source| CaptureError::Map {
                    map: names::ORIG_DST,
                    source,
                })?,
            }
        }
        Ok(swept)
    }

    /// Enrolls a pod in `MESHD_PODS`, giving it a counter slot in `MESHD_PENDING` (the one
    /// it has, when it is enrolled already, e.g. by an earlier agent). `pod.slot` is
    /// ignored; returns the config as written.
    pub fn set_pod(
        &self,
        netns_cookie: u64,
        mut pod: PodConfig,
    ) -> Result<PodConfig, CaptureError> {
        let mut slots = lock(&self.slots);
        pod.slot = match slots.get(&netns_cookie) {
            Some(slot) => *slot,
            None => {
                let used: std::collections::BTreeSet<u32> = slots.values().copied().collect();
                let slot = (0..self.pending.slots())
                    .find(|s| !used.contains(s))
                    .ok_or(CaptureError::Map {
                        map: names::PENDING,
                        source: MapError::OutOfBounds {
                            index: self.pending.slots(),
                            max_entries: self.pending.slots(),
                        },
                    })?;
                self.pending.reset(slot);
                slot
            }
        };
        lock(&self.pods)
            .insert(netns_cookie, pod, 0)
            .map_err(|source| CaptureError::Map {
                map: names::PODS,
                source,
            })?;
        slots.insert(netns_cookie, pod.slot);
        Ok(pod)
    }

    /// The counters of the pod with this namespace cookie, while it is enrolled.
    pub fn counters(&self, netns_cookie: u64) -> Option<PodCounters> {
        let slot = *lock(&self.slots).get(&netns_cookie)?;
        self.pending.get(slot)
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
        drop(map);
        // The pods' entries are gone: their slots are free, their counters zero.
        let mut slots = lock(&self.slots);
        let gone: Vec<u64> = slots.keys().copied().filter(|c| !keep_cookie(*c)).collect();
        for cookie in gone {
            if let Some(slot) = slots.remove(&cookie) {
                self.pending.reset(slot);
            }
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
            _pad: 0,
            stamp_ns: monotonic_ns(),
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
        const BPF_MAP_TYPE_ARRAY: u32 = 2;
        const BPF_F_MMAPABLE: u32 = 1 << 10;
        let slots = 64;
        let obj = aya_obj::Map::new_from_params(
            BPF_MAP_TYPE_ARRAY,
            std::mem::size_of::<u32>() as u32,
            std::mem::size_of::<PodCounters>() as u32,
            slots,
            BPF_F_MMAPABLE,
        );
        let pending = MapData::create(obj, "test_pending", None)?;
        let pending = Counters::map(pending.fd(), slots).map_err(|io_error| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "mmap",
                io_error,
            })
        })?;
        Ok(Maps {
            pending,
            slots: Mutex::new(BTreeMap::new()),
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
            // In-flight entries counted against the enrolled pods' quotas, summed.
            names::PENDING: lock(&self.slots)
                .values()
                .filter_map(|slot| self.pending.get(*slot))
                .map(|c| c.pending)
                .sum::<u64>(),
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

    /// Original destinations nobody accepted for the age are removed and uncounted from
    /// their pod's quota; younger ones stay and are still taken by an accept; the count
    /// never goes below zero. Needs CAP_BPF (the suite runs as root).
    #[test]
    fn entries_nobody_accepted_for_the_age_are_swept_and_uncounted() {
        let maps = Maps::standalone().unwrap();
        let cookie = 7;
        let pod = PodConfig {
            outbound_port: 15001,
            max_pending: 64,
            ..PodConfig::default()
        };
        let slot = maps.set_pod(cookie, pod).unwrap().slot;
        let dst: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        for port in [40000, 40001, 40002] {
            maps.record_orig_dst(cookie, port, dst).unwrap();
        }
        maps.pending.add_pending(slot, 3);
        // Two of them were recorded 61 s ago (as sock_ops stamps them: CLOCK_MONOTONIC).
        {
            let mut map = lock(&maps.orig_dst);
            for port in [40000, 40001] {
                let key = ClientKey {
                    netns_cookie: cookie,
                    port,
                    family: AF_INET,
                    _pad: 0,
                };
                let mut v = map.get(&key, 0).unwrap();
                v.stamp_ns = monotonic_ns() - 61_000_000_000;
                map.insert(key, v, 0).unwrap();
            }
        }
        assert_eq!(maps.sweep_orig_dst(Duration::from_secs(60)).unwrap(), 2);
        assert_eq!(maps.counts()[names::ORIG_DST], 1);
        assert_eq!(maps.counters(cookie).unwrap().pending, 1);
        // Nothing else is old enough.
        assert_eq!(maps.sweep_orig_dst(Duration::from_secs(60)).unwrap(), 0);
        let taken = maps.take_orig_dst(cookie, 40002, false).unwrap();
        assert_eq!((std_ip(&taken.ip), taken.port), (dst.ip(), dst.port()));
        assert_eq!(maps.counters(cookie).unwrap().pending, 0);
        // An entry that was never counted (a bug elsewhere) does not wrap the count.
        maps.record_orig_dst(cookie, 40003, dst).unwrap();
        assert_eq!(maps.sweep_orig_dst(Duration::ZERO).unwrap(), 1);
        assert_eq!(maps.counters(cookie).unwrap().pending, 0);
    }
}
