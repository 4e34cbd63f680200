//! Outbound HBONE connections, pooled per (source workload, destination pod address,
//! expected identity) and multiplexed up to [`hbone::MAX_STREAMS`] tunnels each; a new
//! connection is opened when all are full or closed. Opening is single-flight per key:
//! tunnels that find no free slot at once wait for the one connection being opened and
//! share it, instead of each opening its own.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use h2::client::SendRequest;
use hyper::StatusCode;
use rustls::pki_types::ServerName;

use super::{self as hbone, tunnel::TunnelStream};
use crate::{
    identity::{CertManager, Identity},
    netns::Netns,
    proxy::{
        connect::connect_in,
        tls::{self, errors::RejectReason},
    },
    state::Workload,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelError {
    #[error("{0}")]
    Connect(#[from] crate::proxy::connect::ConnectError),
    #[error("TLS with {addr} (expecting {expected}): {source}")]
    Tls {
        addr: SocketAddr,
        expected: String,
        source: std::io::Error,
    },
    #[error("TLS configuration for {0}: {1}")]
    Config(String, String),
    #[error("HTTP/2 with {addr}: {source}")]
    H2 { addr: SocketAddr, source: h2::Error },
    #[error("CONNECT {target} via {addr}: {status}")]
    Refused {
        addr: SocketAddr,
        target: SocketAddr,
        status: StatusCode,
    },
    #[error("CONNECT {target}: timed out after {timeout:?}")]
    Timeout {
        target: SocketAddr,
        timeout: Duration,
    },
}

impl TunnelError {
    /// The reason label when the peer's identity or certificate was not acceptable.
    pub(crate) fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            TunnelError::Tls { source, .. } => Some(tls::errors::reason(source)),
            // In TLS 1.3 the server checks our certificate after our side of the handshake
            // is done: its refusal arrives as an alert on the first HTTP/2 exchange (h2
            // keeps only the I/O error's text).
            TunnelError::H2 { source, .. } => {
                tls::errors::certificate_refusal_in(&source.to_string())
                    .map(|_| RejectReason::PeerRejectedUs)
            }
            _ => None,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    source: String,
    addr: SocketAddr,
    expected: String,
}

struct Conn {
    sender: SendRequest<Bytes>,
    streams: Arc<AtomicUsize>,
    /// Set when the connection's task ended (closed, failed, or its keep-alive gave up).
    closed: Arc<AtomicBool>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// Keeps a stream slot of a pooled connection while a tunnel is open.
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct Tunnel {
    pub io: TunnelStream,
    /// Held while the tunnel is open.
    pub slot: StreamSlot,
    /// The identity the server proved.
    pub server_id: Identity,
}

pub(crate) struct Pool {
    certs: Arc<CertManager>,
    conns: Mutex<HashMap<Key, Vec<Conn>>>,
    /// One lock per key, held while a connection for that key is being opened.
    opening: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
    timeout: Duration,
}

impl Pool {
    pub(crate) fn new(certs: Arc<CertManager>, timeout: Duration) -> Pool {
        Pool {
            certs,
            conns: Mutex::default(),
            opening: Mutex::default(),
            timeout,
        }
    }

    /// Opens a tunnel from `workload` (dialing from `netns`, its network namespace) to
    /// `target` on the pod at `target.ip()`, whose agent must present `expected`.
    pub(crate) async fn tunnel(
        &self,
        workload: &Workload,
        netns: &Netns,
        local: &Identity,
        target: SocketAddr,
        expected: &Identity,
    ) -> Result<Tunnel, TunnelError> {
        let addr = SocketAddr::new(target.ip(), hbone::HBONE_PORT);
        let key = Key {
            source: workload.key(),
            addr,
            expected: expected.to_string(),
        };
        let (sender, streams) = match self.reuse(&key) {
            Some(c) => c,
            None => {
                // Single flight: one opener per key; the others wait for its connection.
                let lock = self.open_lock(&key);
                let opened = async {
                    let _opening = tokio::time::timeout(self.timeout, lock.lock())
                        .await
                        .map_err(|_| TunnelError::Timeout {
                            target,
                            timeout: self.timeout,
                        })?;
                    match self.reuse(&key) {
                        Some(c) => Ok(c),
                        None => self.open(netns, local, addr, expected, key.clone()).await,
                    }
                }
                .await;
                drop(lock);
                self.release_open_locks();
                opened?
            }
        };
        let slot = StreamSlot(streams);
        let source = workload
            .ips
            .iter()
            .find(|ip| ip.is_ipv4() == target.is_ipv4())
            .copied();
        let req = hbone::connect_request(target, source)
            .map_err(|e| TunnelError::Config(target.to_string(), e.to_string()))?;
        let work = async {
            let h2 = |source| TunnelError::H2 { addr, source };
            let mut sender = sender.ready().await.map_err(h2)?;
            let (resp, send) = sender.send_request(req, false).map_err(h2)?;
            let resp = resp.await.map_err(h2)?;
            if resp.status() != StatusCode::OK {
                return Err(TunnelError::Refused {
                    addr,
                    target,
                    status: resp.status(),
                });
            }
            Ok(TunnelStream::new(send, resp.into_body()))
        };
        let io = tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| TunnelError::Timeout {
                target,
                timeout: self.timeout,
            })??;
        Ok(Tunnel {
            io,
            slot,
            server_id: expected.clone(),
        })
    }

    /// A pooled connection with a free stream slot (taking the slot).
    fn reuse(&self, key: &Key) -> Option<(SendRequest<Bytes>, Arc<AtomicUsize>)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.is_closed());
        let c = list
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < hbone::MAX_STREAMS as usize)?;
        c.streams.fetch_add(1, Ordering::Relaxed);
        Some((c.sender.clone(), c.streams.clone()))
    }

    /// The lock held while a connection for `key` is being opened.
    fn open_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        opening.entry(key.clone()).or_default().clone()
    }

    /// Forgets the opening locks nobody holds or waits for, so that the map does not keep
    /// one entry for every key ever opened.
    fn release_open_locks(&self) {
        let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
        opening.retain(|_, l| Arc::strong_count(l) > 1);
    }

    async fn open(
        &self,
        netns: &Netns,
        local: &Identity,
        addr: SocketAddr,
        expected: &Identity,
        key: Key,
    ) -> Result<(SendRequest<Bytes>, Arc<AtomicUsize>), TunnelError> {
        let config =
            crate::identity::client_config(self.certs.clone(), local.clone(), expected.clone())
                .map_err(|e| TunnelError::Config(expected.to_string(), e.to_string()))?;
        let tcp = connect_in(netns, addr, self.timeout).await?;
        let name = ServerName::try_from("hbone.meshd.local")
            .map_err(|e| TunnelError::Config(expected.to_string(), e.to_string()))?;
        let tls = tokio::time::timeout(self.timeout, tls::connect(config, name, tcp))
            .await
            .map_err(|_| TunnelError::Tls {
                addr,
                expected: expected.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"),
            })?
            .map_err(|source| TunnelError::Tls {
                addr,
                expected: expected.to_string(),
                source,
            })?;
        let (sender, mut conn) = hbone::h2_client()
            .handshake(tls)
            .await
            .map_err(|source| TunnelError::H2 { addr, source })?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = conn.ping_pong();
        let done = closed.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "HBONE connection ended");
                },
                e = hbone::keepalive(ping) => {
                    tracing::info!(%addr, error = %e, "HBONE connection dropped by keep-alive");
                }
            }
            done.store(true, Ordering::Relaxed);
        });
        let streams = Arc::new(AtomicUsize::new(1));
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.entry(key).or_default().push(Conn {
            sender: sender.clone(),
            streams: streams.clone(),
            closed,
        });
        tracing::debug!(%addr, expected = %expected, "opened HBONE connection");
        Ok((sender, streams))
    }

    /// Open pooled connections, for `/config_dump`.
    pub(crate) fn connection_count(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.values().flatten().filter(|c| !c.is_closed()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server's refusal of our certificate reaches the pool only as h2's copy of the
    /// I/O error's text: the alert as rustls prints it is what `reject_reason` reads.
    #[test]
    fn a_certificate_alert_after_the_handshake_is_peer_rejected_us() {
        let reason = |alert| {
            let text = rustls::Error::AlertReceived(alert).to_string();
            tls::errors::certificate_refusal_in(&text)
        };
        use rustls::AlertDescription as A;
        for a in [
            A::DecryptError,
            A::BadCertificate,
            A::UnknownCA,
            A::CertificateRequired,
        ] {
            assert_eq!(reason(a), Some(a), "{a:?}");
        }
        for a in [A::BadRecordMac, A::InternalError, A::HandshakeFailure] {
            assert_eq!(reason(a), None, "{a:?}");
        }
    }
}
