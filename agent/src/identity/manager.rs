//! [`CertManager`]: issues, caches and renews the certificates of the node's workloads.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::{
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    sign::CertifiedKey,
    ClientConfig, ServerConfig,
};
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    crypto::provider,
    error::fmt_time,
    issuer::{IssuedCert, Issuer},
    Identity, IdentityError, IssuerFiles, TrustAnchors,
};

/// The default lifetime of workload certificates.
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// The renewal task looks at the certificates at least this often.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// After a failed renewal, the next attempt for that identity.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// The renewal task never spins faster than this.
const MIN_SLEEP: Duration = Duration::from_millis(50);

/// The trust anchors and the verifier of client certificates built from them.
struct Trust {
    anchors: Arc<TrustAnchors>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl Trust {
    fn new(anchors: TrustAnchors) -> Result<Trust, IdentityError> {
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(anchors.roots().clone(), provider())
                .build()
                .map_err(|source| IdentityError::Verifier {
                    path: anchors.path().to_path_buf(),
                    source,
                })?;
        Ok(Trust {
            anchors: Arc::new(anchors),
            client_verifier,
        })
    }
}

type ClientConfigKey = (Identity, Identity);

/// Holds the issuer and the trust anchors, issues a certificate per workload identity on
/// demand (key generated in memory, never written), caches it, and renews it at half-life
/// ([`CertManager::spawn_renewal`]). Certificates are swapped atomically: TLS sessions keep
/// the certificate they were established with, new handshakes get the current one.
pub struct CertManager {
    ttl: Duration,
    trust: ArcSwap<Trust>,
    issuer: ArcSwap<Issuer>,
    certs: ArcSwap<HashMap<Identity, Arc<IssuedCert>>>,
    /// Serializes changes to `certs` (readers never wait).
    write: Mutex<()>,
    renewals: AtomicU64,
    /// Wakes the renewal task when a certificate is added.
    changed: Arc<Notify>,
    server_configs: Mutex<HashMap<Identity, Arc<ServerConfig>>>,
    client_configs: Mutex<HashMap<ClientConfigKey, Arc<ClientConfig>>>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("ttl", &self.ttl)
            .field("issuer", &self.issuer.load().subject())
            .field("trust_anchors", &self.trust.load().anchors.subjects())
            .field("certificates", &self.certs.load().len())
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// Loads the trust anchors and the issuer from `files` (checking that the issuer is a
    /// valid CA under one of the anchors and that the key is its key). Workload certificates
    /// will live `leaf_ttl` ([`DEFAULT_LEAF_TTL`] normally), capped at the issuer's expiry.
    pub fn load(files: &IssuerFiles, leaf_ttl: Duration) -> Result<CertManager, IdentityError> {
        if leaf_ttl.is_zero() {
            return Err(IdentityError::InvalidTtl {
                ttl: leaf_ttl,
                reason: "must be more than zero",
            });
        }
        let anchors = TrustAnchors::load(&files.trust_anchors)?;
        let issuer = Issuer::load(files, &anchors)?;
        Ok(CertManager {
            ttl: leaf_ttl,
            trust: ArcSwap::from_pointee(Trust::new(anchors)?),
            issuer: ArcSwap::from_pointee(issuer),
            certs: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
            renewals: AtomicU64::new(0),
            changed: Arc::new(Notify::new()),
            server_configs: Mutex::new(HashMap::new()),
            client_configs: Mutex::new(HashMap::new()),
        })
    }

    /// The current certificate (chain and key) for `id`, issuing one if there is none yet.
    /// Renewal is the job of [`CertManager::spawn_renewal`].
    pub fn certificate(&self, id: &Identity) -> Result<Arc<CertifiedKey>, IdentityError> {
        if let Some(cert) = self.fresh(id) {
            return Ok(cert);
        }
        let _write = lock(&self.write);
        // Another handshake may have issued it while we waited.
        if let Some(cert) = self.fresh(id) {
            return Ok(cert);
        }
        let issued = self.issuer.load().issue(id, self.ttl)?;
        tracing::info!(identity = %id, serial = %issued.serial, not_after = %fmt_time(issued.not_after), "issued workload certificate");
        let key = issued.key.clone();
        self.insert_locked(issued);
        self.changed.notify_one();
        Ok(key)
    }

    fn fresh(&self, id: &Identity) -> Option<Arc<CertifiedKey>> {
        self.certs.load().get(id).map(|c| c.key.clone())
    }

    /// Stops renewing the certificate of `id` (its workloads left the node). Returns whether
    /// there was one. A later [`CertManager::certificate`] issues a new one.
    pub fn forget(&self, id: &Identity) -> bool {
        let _write = lock(&self.write);
        let certs = self.certs.load();
        if !certs.contains_key(id) {
            return false;
        }
        let mut next = HashMap::clone(&certs);
        next.remove(id);
        self.certs.store(Arc::new(next));
        lock(&self.server_configs).remove(id);
        lock(&self.client_configs).retain(|(local, _), _| local != id);
        true
    }

    /// The identities with a certificate and when each certificate expires (`not_after`),
    /// sorted by identity; for the expiry metric and `meshd check`.
    pub fn expiries(&self) -> Vec<(Identity, SystemTime)> {
        let mut out: Vec<_> = self
            .certs
            .load()
            .values()
            .map(|c| (c.identity.clone(), c.not_after))
            .collect();
        out.sort();
        out
    }

    /// How many certificates the renewal task has replaced since start.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }

    /// The lifetime of workload certificates.
    pub fn leaf_ttl(&self) -> Duration {
        self.ttl
    }

    /// The issuer certificate's subject and expiry.
    pub fn issuer(&self) -> (String, SystemTime) {
        let issuer = self.issuer.load();
        (issuer.subject().to_string(), issuer.not_after())
    }

    /// The current trust anchors.
    pub fn trust_anchors(&self) -> Arc<TrustAnchors> {
        self.trust.load().anchors.clone()
    }

    /// The current verifier of client certificates (webpki, the current anchors).
    pub(crate) fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.trust.load().client_verifier.clone()
    }

    /// Starts the renewal task: it replaces each certificate at half its lifetime (from
    /// issuance), sleeping until the earliest one is due and looking at least every few
    /// seconds. It ends when the manager is dropped (it holds only a weak reference).
    pub fn spawn_renewal(self: &Arc<Self>) -> JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let changed = self.changed.clone();
        tokio::spawn(async move {
            loop {
                let wait = {
                    let Some(mgr) = weak.upgrade() else { return };
                    mgr.renew_due();
                    mgr.next_wakeup()
                };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = changed.notified() => {}
                }
            }
        })
    }

    /// Renews every certificate whose renewal time has come.
    fn renew_due(&self) {
        let now = SystemTime::now();
        let due: Vec<Identity> = self
            .certs
            .load()
            .values()
            .filter(|c| c.renew_at <= now)
            .map(|c| c.identity.clone())
            .collect();
        for id in due {
            self.renew(&id);
        }
    }

    /// Issues a new certificate for `id` and swaps it in; on failure keeps the old one and
    /// retries later.
    fn renew(&self, id: &Identity) {
        let _write = lock(&self.write);
        let certs = self.certs.load();
        let Some(old) = certs.get(id).cloned() else {
            return;
        };
        match self.issuer.load().issue(id, self.ttl) {
            Ok(issued) => {
                tracing::info!(
                    identity = %id,
                    serial = %issued.serial,
                    previous_serial = %old.serial,
                    not_after = %fmt_time(issued.not_after),
                    "renewed workload certificate"
                );
                self.insert_locked(issued);
                self.renewals.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let retry = SystemTime::now() + RETRY_INTERVAL;
                tracing::warn!(
                    identity = %id,
                    error = %e,
                    not_after = %fmt_time(old.not_after),
                    "cannot renew workload certificate; retrying in {RETRY_INTERVAL:?}"
                );
                self.insert_locked(IssuedCert {
                    identity: old.identity.clone(),
                    key: old.key.clone(),
                    serial: old.serial.clone(),
                    issued_at: old.issued_at,
                    not_before: old.not_before,
                    not_after: old.not_after,
                    renew_at: retry,
                });
            }
        }
    }

    /// How long the renewal task may sleep.
    fn next_wakeup(&self) -> Duration {
        let now = SystemTime::now();
        self.certs
            .load()
            .values()
            .map(|c| c.renew_at.duration_since(now).unwrap_or_default())
            .min()
            .unwrap_or(CHECK_INTERVAL)
            .clamp(MIN_SLEEP, CHECK_INTERVAL)
    }

    /// Swaps `cert` in; the caller holds `self.write`.
    fn insert_locked(&self, cert: IssuedCert) {
        let mut next = HashMap::clone(&self.certs.load());
        next.insert(cert.identity.clone(), Arc::new(cert));
        self.certs.store(Arc::new(next));
    }

    pub(crate) fn cached_server_config(&self, id: &Identity) -> Option<Arc<ServerConfig>> {
        lock(&self.server_configs).get(id).cloned()
    }

    /// Caches `config` unless another caller got there first; returns the cached one.
    pub(crate) fn cache_server_config(
        &self,
        id: Identity,
        config: Arc<ServerConfig>,
    ) -> Arc<ServerConfig> {
        lock(&self.server_configs)
            .entry(id)
            .or_insert(config)
            .clone()
    }

    pub(crate) fn cached_client_config(&self, key: &ClientConfigKey) -> Option<Arc<ClientConfig>> {
        lock(&self.client_configs).get(key).cloned()
    }

    /// Caches `config` unless another caller got there first; returns the cached one.
    pub(crate) fn cache_client_config(
        &self,
        key: ClientConfigKey,
        config: Arc<ClientConfig>,
    ) -> Arc<ClientConfig> {
        lock(&self.client_configs)
            .entry(key)
            .or_insert(config)
            .clone()
    }

    /// Makes `id`'s current certificate one with explicit validity (for `meshd diagnostics`
    /// and tests: expired and not-yet-valid certificates).
    pub(crate) fn install_with_validity(
        &self,
        id: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(), IdentityError> {
        let _write = lock(&self.write);
        let issued =
            self.issuer
                .load()
                .issue_with_validity(id, SystemTime::now(), not_before, not_after)?;
        self.insert_locked(issued);
        Ok(())
    }

    /// Test hook: the serial number of `id`'s current certificate.
    #[cfg(test)]
    pub(crate) fn serial(&self, id: &Identity) -> Option<String> {
        self.certs.load().get(id).map(|c| c.serial.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
