//! Load balancing over a service's endpoints, like Linkerd's: power of two choices over the
//! endpoints' load (connections in flight), skipping endpoints that failed recently.
//!
//! Two candidates are drawn at random and the less loaded one wins; on equal load the one
//! picked less often wins, so sequential connections alternate evenly. An endpoint whose
//! connection failed is left out for [`DOWN_FOR`] (passive health checking), so a dead
//! endpoint costs one failed attempt, not one per connection.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

/// How long an endpoint that refused a connection is left out.
pub const DOWN_FOR: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Endpoint {
    addr: SocketAddr,
    outstanding: AtomicUsize,
    picked: AtomicU64,
    down_until_ms: AtomicU64,
}

#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Arc<Endpoint>>,
    seed: AtomicU64,
}

/// An endpoint in use: counts towards its load until dropped.
#[derive(Debug)]
pub struct Lease(Arc<Endpoint>);

impl Lease {
    pub fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// The connection to this endpoint failed: leave it out for a while.
    pub fn failed(&self) {
        self.0
            .down_until_ms
            .store(now_ms() + DOWN_FOR.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl Balancer {
    pub fn new(addrs: &[SocketAddr]) -> Balancer {
        Balancer {
            endpoints: addrs
                .iter()
                .map(|addr| {
                    Arc::new(Endpoint {
                        addr: *addr,
                        outstanding: AtomicUsize::new(0),
                        picked: AtomicU64::new(0),
                        down_until_ms: AtomicU64::new(0),
                    })
                })
                .collect(),
            seed: AtomicU64::new(now_ms() | 1),
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.iter().map(|e| e.addr).collect()
    }

    /// A pseudo-random number (xorshift; quality is not a concern here).
    fn random(&self) -> u64 {
        let mut x = self.seed.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed.store(x, Ordering::Relaxed);
        x
    }

    /// Picks an endpoint that is up and not in `tried`, or `None` when there is none.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Lease> {
        let now = now_ms();
        let live: Vec<&Arc<Endpoint>> = self
            .endpoints
            .iter()
            .filter(|e| e.down_until_ms.load(Ordering::Relaxed) <= now && !tried.contains(&e.addr))
            .collect();
        let chosen = match live.len() {
            0 => return None,
            1 => live[0],
            n => {
                let i = (self.random() % n as u64) as usize;
                let mut j = (self.random() % (n as u64 - 1)) as usize;
                if j >= i {
                    j += 1;
                }
                let (a, b) = (live[i], live[j]);
                let key = |e: &Endpoint| {
                    (
                        e.outstanding.load(Ordering::Relaxed),
                        e.picked.load(Ordering::Relaxed),
                    )
                };
                if key(b) < key(a) {
                    b
                } else {
                    a
                }
            }
        };
        chosen.outstanding.fetch_add(1, Ordering::Relaxed);
        chosen.picked.fetch_add(1, Ordering::Relaxed);
        Some(Lease(chosen.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
            .collect()
    }

    #[test]
    fn sequential_picks_spread_evenly() {
        let b = Balancer::new(&addrs(2));
        let mut count = [0; 2];
        for _ in 0..10 {
            let l = b.pick(&[]).unwrap();
            count[(l.addr().port() - 8000) as usize] += 1;
        }
        assert_eq!(count, [5, 5]);
    }

    #[test]
    fn prefers_the_less_loaded() {
        let b = Balancer::new(&addrs(2));
        let held = b.pick(&[]).unwrap();
        // With two endpoints both are always the candidates: the idle one wins.
        for _ in 0..5 {
            let l = b.pick(&[]).unwrap();
            assert_ne!(l.addr(), held.addr());
        }
    }

    #[test]
    fn failed_endpoints_are_left_out() {
        let b = Balancer::new(&addrs(3));
        let first = b.pick(&[]).unwrap();
        first.failed();
        let dead = first.addr();
        drop(first);
        for _ in 0..20 {
            assert_ne!(b.pick(&[]).unwrap().addr(), dead);
        }
        let all = addrs(3);
        assert!(b.pick(&all).is_none(), "everything tried");
        for a in &all {
            if *a != dead {
                let l = b.pick(&[*a]).unwrap();
                l.failed();
            }
        }
        assert!(b.pick(&[]).is_none(), "no live endpoint");
    }
}
