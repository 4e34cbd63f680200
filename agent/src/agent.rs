//! The node agent: keeps the set of captured workloads equal to the local workloads of the
//! current [`State`], one workload at a time, so that one bad workload never stops the
//! others. It watches the [`StateStore`] (whatever source feeds it) and applies each new
//! snapshot ([`Agent::reconcile`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use meshd_common::{PodConfig, OUTBOUND_PORT, POD_FLAG_IPV6};
use serde::Serialize;

use crate::{
    capture::{Capture, Enrollment, PinPaths},
    drain::DrainWatcher,
    identity::{CertManager, Identity},
    netns::Netns,
    pod_routing,
    policy::{PolicySettings, PolicyStore},
    policy_feed::PolicyFeed,
    proxy::{
        accept_gate::{self, AcceptGate},
        balance::Balancers,
        hbone::pool::Pool,
        limits::{default_max_sockets, Budgets, Limits},
        Connections, Mesh, PodContext, PodProxy, ProxyContext,
    },
    settings::{InboundSettings, LimitSettings, Settings},
    state::{LocalWorkload, State, StateStore, Workload},
    telemetry::{metrics::CaptureRefusedLabels, Telemetry},
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("loading eBPF capture: {0}")]
    Capture(#[from] crate::capture::CaptureError),
    #[error("loading the mesh identity: {0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// Why a workload could not be enrolled (shown as its `error` in `/config_dump`; the
/// workload is retried with the next state).
#[derive(Debug, thiserror::Error)]
enum EnrollError {
    #[error("not a local workload")]
    NotLocal,
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::listener::ProxyError),
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    /// The agent's listeners could not be bound (the pod holds one of their ports): the
    /// pod is captured all the same, so that its traffic is refused, not sent in plaintext.
    #[error("{0}; its connections are refused until the agent can listen (the capture stays)")]
    HeldClosed(crate::proxy::listener::ProxyError),
}

impl EnrollError {
    /// The `reason` label of `workload_enroll_failures_total`.
    fn reason(&self) -> &'static str {
        match self {
            EnrollError::NotLocal => "not_local",
            EnrollError::Netns(_) => "netns",
            EnrollError::Identity(_) => "identity",
            EnrollError::Proxy(_) | EnrollError::HeldClosed(_) => "listen",
            EnrollError::Capture(_) => "capture",
        }
    }
}

/// How an attempt to enroll a workload ended.
enum Attempt {
    Enrolled(Enrolled),
    /// Captured without listeners (the pod holds one of their ports): its connections
    /// are refused; retried later.
    HeldClosed(Enrolled, EnrollError),
    Failed(EnrollError),
}

struct Enrolled {
    workload: Arc<Workload>,
    netns: Arc<Netns>,
    /// The namespace found at the workload's netns path when it was enrolled.
    netns_id: Option<(u64, u64)>,
    /// The pod's listeners; `None` while it is held closed: captured without them, so
    /// that its connections are refused (its enrollment is retried).
    proxy: Option<PodProxy>,
}

/// Status of one local workload, for `/config_dump`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkloadStatus {
    pub workload: String,
    pub enrolled: bool,
    /// The programs are attached: true when enrolled, and for a workload held closed
    /// (not enrolled, its connections refused).
    pub captured: bool,
    pub netns_cookie: Option<u64>,
    pub error: Option<String>,
}

pub(crate) struct Agent {
    pub state: Arc<StateStore>,
    pub proxy: Arc<ProxyContext>,
    /// Compiles each applied state's policy into `proxy.policy`.
    pub policy: PolicyFeed,
    capture: Mutex<Capture>,
    /// `limits.maxPendingConnectsPerPod`.
    max_pending_connects: u32,
    enrolled: Mutex<BTreeMap<String, Enrolled>>,
    /// The state `enrolled` was last made to match (changed under the `enrolled` lock).
    applied: Mutex<Arc<State>>,
    errors: Mutex<BTreeMap<String, String>>,
    /// Set once the first configuration has been applied.
    pub ready: std::sync::atomic::AtomicBool,
    /// What the accept loops of enrolled pods watch, and spawn connection tasks through.
    drain: DrainWatcher,
    /// How inbound connections are delivered.
    inbound: InboundSettings,
}

/// How long an un-enrolled workload's listeners stay open after its links are gone.
const UNENROLL_GRACE: Duration = Duration::from_millis(100);
/// How long un-enrolling waits for a workload's listeners to close.
const LISTENER_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often workloads that failed to enroll are retried while the state does not change.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// The namespace a netns path refers to now (device and inode of the nsfs file), `None`
/// when the path is gone.
fn namespace_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The budgets' sizes: `maxSockets` derived from the open-files limit (which `meshd run`
/// raised already) when the file does not set it.
fn limits(settings: &LimitSettings) -> Limits {
    let max_sockets = settings.max_sockets.unwrap_or_else(|| {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(20_000, |(soft, _)| soft);
        let reserved = FD_RESERVE + settings.max_handshakes as u64;
        default_max_sockets(nofile, reserved)
    });
    let limits = Limits {
        max_sockets,
        max_connections_per_pod: settings.max_connections_per_pod,
        max_handshakes: settings.max_handshakes,
        max_handshakes_per_pod: settings.max_handshakes_per_pod,
    };
    if limits.max_connections_per_pod >= limits.max_sockets {
        tracing::warn!(?limits, "limits.maxConnectionsPerPod is not below the node's socket budget (limits.maxSockets, or what the open-files limit allows): one pod can take every socket; raise the open-files limit or lower limits.maxConnectionsPerPod");
    }
    tracing::info!(?limits, "connection and handshake budgets");
    limits
}

/// How often [`Agent::sweep_orig_dst`] runs.
const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// An original destination older than this was never accepted: the agent accepts at once,
/// and the kernel gives up on a connection whose handshake is not answered well before.
const ORIG_DST_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Descriptors kept out of the connection budget's default: listeners (five per pod),
/// the HBONE pool's connections, the maps and programs, the admin API.
const FD_RESERVE: u64 = 4096;

impl Agent {
    /// Loads the identity issuer (when configured) and the programs (adopting earlier pins)
    /// and prepares an empty agent. Must run inside the tokio runtime.
    /// The proxy follows `state` from here on (its balancers are reconciled with each new
    /// snapshot); the agent itself applies snapshots once [`Agent::reconcile`] runs.
    /// Connections are drained through `drain` on shutdown.
    pub(crate) fn start(
        settings: &Settings,
        state: Arc<StateStore>,
        drain: DrainWatcher,
    ) -> Result<Agent, StartError> {
        let connect_timeout = settings.connect_timeout;
        let mesh = match &settings.identity {
            None => None,
            Some(id) => {
                let files = id.issuer_files();
                let certs = Arc::new(CertManager::load(&files, id.certificate_ttl)?);
                for k in crate::identity::anchor_keys_beside(&files, &certs.trust_anchors()) {
                    tracing::warn!(key = %k.path.display(), anchor = %k.anchor, "a trust anchor's private key sits beside the issuer files: whoever reads this node's files can make issuers of their own; keep it off the nodes");
                }
                certs.spawn_renewal();
                tracing::info!(trust_domain = %settings.trust_domain, issuer = %certs.issuer().0, "mutual TLS between workloads is on");
                Some(Mesh {
                    trust_domain: settings.trust_domain.clone(),
                    pool: Pool::new(certs.clone(), connect_timeout),
                    certs,
                })
            }
        };
        let capture = Capture::load(PinPaths::new(&settings.bpffs))?;
        let balancers = Arc::new(Balancers::default());
        tokio::spawn(balancers.clone().follow(state.subscribe()));
        let proxy = Arc::new(ProxyContext {
            state: state.clone(),
            balancers,
            maps: capture.maps().clone(),
            connections: Arc::new(Connections::default()),
            telemetry: Arc::new(Telemetry::default()),
            connect_timeout,
            handshake_timeout: settings.handshake_timeout,
            budgets: Budgets::new(limits(&settings.limits)),
            mesh,
            policy: Arc::new(PolicyStore::new(PolicySettings {
                trust_domain: settings.trust_domain.clone(),
                ..PolicySettings::default()
            })),
        });
        Ok(Agent {
            state,
            policy: PolicyFeed::new(proxy.policy.clone(), settings.trust_domain.clone()),
            proxy,
            capture: Mutex::new(capture),
            max_pending_connects: settings.limits.max_pending_connects_per_pod,
            enrolled: Mutex::new(BTreeMap::new()),
            applied: Mutex::default(),
            errors: Mutex::new(BTreeMap::new()),
            ready: Default::default(),
            drain,
            inbound: settings.inbound,
        })
    }

    /// Applies every snapshot the store publishes (the latest, when several come while one
    /// is applied), until the store is gone; while a workload is not enrolled, applies the
    /// current one again every [`RETRY_INTERVAL`]. Enrollment does blocking set-up work
    /// (namespaces, bpf syscalls), so each runs on a blocking thread.
    pub(crate) async fn reconcile(
        self: Arc<Self>,
        mut updates: tokio::sync::watch::Receiver<Arc<State>>,
    ) {
        loop {
            let retry = !lock(&self.errors).is_empty();
            tokio::select! {
                changed = updates.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RETRY_INTERVAL), if retry => {}
            }
            let state = updates.borrow_and_update().clone();
            let agent = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || agent.apply(&state)).await {
                tracing::error!(error = %e, "applying a new state panicked");
            }
        }
    }

    /// Publishes the policy of `state` (before any of its workloads accepts a connection),
    /// then enrolls / un-enrolls workloads to match it.
    pub(crate) fn apply(&self, state: &Arc<State>) {
        self.policy.apply(state);
        let desired: BTreeMap<String, Arc<Workload>> = state
            .local_workloads()
            .map(|w| (w.key(), w.clone()))
            .collect();
        let mut enrolled = lock(&self.enrolled);
        *lock(&self.applied) = state.clone();
        let mut errors = lock(&self.errors);
        // Removed, or changed in a way that needs new listeners or links.
        let stale: Vec<String> = enrolled
            .iter()
            .filter(|(k, e)| match desired.get(*k) {
                None => true,
                Some(w) => {
                    w.local != e.workload.local
                        || w.ips != e.workload.ips
                        // The same path, but another namespace (the pod recreated).
                        || w.local.as_ref().map(|l| namespace_id(&l.netns)) != Some(e.netns_id)
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        let leaving: Vec<(String, Enrolled)> = stale
            .into_iter()
            .filter_map(|k| enrolled.remove(&k).map(|e| (k, e)))
            .collect();
        self.unenroll(leaving);
        errors.retain(|k, _| desired.contains_key(k));
        // The outbound listeners of the pods enrolled here accept once all of them are
        // enrolled: a pod's connection to another pod of the batch must not meet that pod's
        // capture (adopted from an earlier agent) before its listener is there.
        let (opener, gate) = accept_gate::closed();
        for (key, workload) in &desired {
            let held = match enrolled.get_mut(key) {
                Some(e) if e.proxy.is_some() => {
                    e.workload = workload.clone();
                    continue;
                }
                Some(e) => {
                    e.workload = workload.clone();
                    true
                }
                None => false,
            };
            let result = if held {
                self.release(key, &mut enrolled, &gate)
            } else {
                match self.enroll(workload, &gate) {
                    Attempt::Enrolled(e) => {
                        enrolled.insert(key.clone(), e);
                        Ok(())
                    }
                    Attempt::HeldClosed(e, err) => {
                        enrolled.insert(key.clone(), e);
                        Err(err)
                    }
                    Attempt::Failed(err) => Err(err),
                }
            };
            match result {
                Ok(()) => {
                    if let Some(e) = enrolled.get(key) {
                        tracing::info!(workload = %key, netns_cookie = e.netns.cookie(), "workload enrolled");
                    }
                    errors.remove(key);
                }
                Err(err) => {
                    self.proxy.telemetry.metrics.enroll_failure(err.reason());
                    let message = err.to_string();
                    if errors.get(key) == Some(&message) {
                        tracing::debug!(workload = %key, error = %err, "cannot enroll workload (retried)");
                    } else {
                        tracing::error!(workload = %key, error = %err, "cannot enroll workload");
                    }
                    errors.insert(key.clone(), message);
                }
            }
        }
        opener.open();
        // Then the slow part of re-enrolling adopted workloads.
        lock(&self.capture).renew_sk_lookups();
        let not_enrolled = desired
            .len()
            .saturating_sub(enrolled.values().filter(|e| e.proxy.is_some()).count());
        self.proxy
            .telemetry
            .metrics
            .workloads_not_enrolled
            .set(i64::try_from(not_enrolled).unwrap_or(i64::MAX));
        self.forget_departed(&enrolled);
        // After an upgrade: what the agent of the older pin version left goes, workload by
        // workload, once this agent captures it (or it is not in the config).
        let keys: BTreeSet<String> = desired.keys().cloned().collect();
        lock(&self.capture).retire_other_versions(&keys);
        if !self.ready.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // First state after start-up: drop what an earlier agent left for workloads that
            // are gone now.
            let cookies: BTreeSet<u64> = enrolled.values().map(|e| e.netns.cookie()).collect();
            let ips: Vec<IpAddr> = enrolled
                .values()
                .flat_map(|e| e.workload.ips.clone())
                .collect();
            lock(&self.capture).prune(&cookies, &ips);
        }
    }

    /// Forgets the certificates of identities no enrolled workload has any more (they
    /// left the node, or failed to enroll): no more renewals, and their keys are dropped.
    fn forget_departed(&self, enrolled: &BTreeMap<String, Enrolled>) {
        let Some(mesh) = &self.proxy.mesh else {
            return;
        };
        let current: BTreeSet<Identity> = enrolled
            .values()
            .filter(|e| e.proxy.is_some())
            .map(|e| mesh.identity_of(&e.workload))
            .collect();
        for (id, _) in mesh.certs.expiries() {
            if !current.contains(&id) && mesh.certs.forget(&id) {
                tracing::info!(identity = %id, "no workload on this node has this identity any more: its certificate is forgotten");
            }
        }
    }

    /// Enrolls a workload: its listeners, then its capture. When the listeners cannot be
    /// bound (the pod holds one of the agent's ports), the pod is captured all the same,
    /// without listeners, so that its connections are refused.
    fn enroll(&self, workload: &Arc<Workload>, gate: &AcceptGate) -> Attempt {
        let Some(local) = workload.local.as_ref() else {
            return Attempt::Failed(EnrollError::NotLocal);
        };
        let netns = match Netns::open(&local.netns) {
            Ok(n) => Arc::new(n),
            Err(e) => return Attempt::Failed(e.into()),
        };
        let netns_id = namespace_id(&local.netns);
        let pod = match self.pod_context(workload, &netns) {
            Ok(p) => p,
            Err(e) => return Attempt::Failed(e),
        };
        let mut e = Enrolled {
            workload: workload.clone(),
            netns,
            netns_id,
            proxy: None,
        };
        match PodProxy::start(&self.proxy, pod, &self.drain, gate) {
            Ok(proxy) => match self.capture(&e, Some(&proxy)) {
                Ok(()) => {
                    e.proxy = Some(proxy);
                    Attempt::Enrolled(e)
                }
                Err(err) => Attempt::Failed(err),
            },
            Err(listen) => match self.capture(&e, None) {
                Ok(()) => Attempt::HeldClosed(e, EnrollError::HeldClosed(listen)),
                Err(err) => Attempt::Failed(err),
            },
        }
    }

    /// Retries the listeners of a workload held closed (its links stay attached).
    fn release(
        &self,
        key: &str,
        enrolled: &mut BTreeMap<String, Enrolled>,
        gate: &AcceptGate,
    ) -> Result<(), EnrollError> {
        let Some(e) = enrolled.get_mut(key) else {
            return Ok(());
        };
        let pod = self.pod_context(&e.workload, &e.netns)?;
        let proxy = PodProxy::start(&self.proxy, pod, &self.drain, gate)
            .map_err(EnrollError::HeldClosed)?;
        self.capture(e, Some(&proxy))?;
        e.proxy = Some(proxy);
        Ok(())
    }

    /// What the pod's listeners need: its workload, namespace and identity (whose
    /// certificate is issued now, not on the first connection).
    fn pod_context(
        &self,
        workload: &Arc<Workload>,
        netns: &Arc<Netns>,
    ) -> Result<Arc<PodContext>, EnrollError> {
        let identity = self.proxy.mesh.as_ref().map(|m| m.identity_of(workload));
        if let (Some(mesh), Some(id)) = (&self.proxy.mesh, &identity) {
            mesh.certs.certificate(id)?;
        }
        Ok(Arc::new(PodContext {
            workload: workload.clone(),
            netns: netns.clone(),
            identity,
            budgets: self.proxy.budgets.pod(),
            delivery_mark: self.delivery_routing(workload, netns),
        }))
    }

    /// Installs the routing that lets deliveries to this pod come from the client's own
    /// address, and returns their mark; `None` (deliveries from the pod's own address) when
    /// it is turned off or cannot be installed, which is said once per enrollment.
    fn delivery_routing(&self, workload: &Workload, netns: &Netns) -> Option<u32> {
        let inbound = self.inbound;
        if !inbound.preserve_source_address {
            return None;
        }
        let v6 = workload.ips.iter().any(|ip| ip.is_ipv6());
        match pod_routing::install(netns, inbound.delivery_mark, v6) {
            Ok(()) => Some(inbound.delivery_mark),
            Err(e) => {
                tracing::warn!(workload = %workload.key(), error = %e, "cannot route deliveries from the client's address: the app will see the pod's own address as the source");
                None
            }
        }
    }

    /// Removes what [`Agent::delivery_routing`] installed in a pod that leaves the mesh.
    fn remove_delivery_routing(&self, key: &str, workload: &Workload, netns: &Netns) {
        let inbound = self.inbound;
        if !inbound.preserve_source_address {
            return;
        }
        let v6 = workload.ips.iter().any(|ip| ip.is_ipv6());
        if let Err(err) = pod_routing::remove(netns, inbound.delivery_mark, v6) {
            tracing::warn!(workload = %key, error = %err, "cannot remove the delivery routing");
        }
    }

    /// Captures a workload: map entries, then links (kept when they exist). With no
    /// `proxy` (held closed) nothing listens: connect4/connect6 send its connections, IPv6
    /// ones too, to a closed port. A failure undoes what was attached.
    fn capture(&self, e: &Enrolled, proxy: Option<&PodProxy>) -> Result<(), EnrollError> {
        let workload = &e.workload;
        let local: &LocalWorkload = workload.local.as_ref().ok_or(EnrollError::NotLocal)?;
        let listeners = proxy
            .map(|proxy| {
                workload
                    .ips
                    .iter()
                    .filter_map(|ip| {
                        let fd = if ip.is_ipv4() {
                            proxy.inbound_v4
                        } else {
                            proxy.inbound_v6
                        };
                        fd.map(|fd| (*ip, fd))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let skip_in: Vec<u16> = local.skip_inbound_ports.iter().copied().collect();
        let skip_out: Vec<u16> = local.skip_outbound_ports.iter().copied().collect();
        let key = workload.key();
        let enrollment = Enrollment {
            key: &key,
            cgroup: &local.cgroup,
            netns: &local.netns,
            netns_cookie: e.netns.cookie(),
            ips: &workload.ips,
            pod: PodConfig {
                outbound_port: OUTBOUND_PORT,
                flags: if proxy.is_none_or(|p| p.outbound_v6) {
                    POD_FLAG_IPV6
                } else {
                    0
                },
                // Given by the maps (`Maps::set_pod`).
                slot: 0,
                max_pending: self.max_pending_connects,
            },
            skip_inbound_ports: &skip_in,
            skip_outbound_ports: &skip_out,
            listeners,
        };
        let mut capture = lock(&self.capture);
        if let Err(err) = capture.enroll(&enrollment) {
            let undo = capture
                .detach(&key)
                .and_then(|()| capture.forget(e.netns.cookie(), &workload.ips));
            if let Err(undo) = undo {
                tracing::warn!(workload = %key, error = %undo, "rolling back a failed enrollment");
            }
            return Err(err.into());
        }
        Ok(())
    }

    /// Stops capturing workloads without failing connections in flight: the redirecting
    /// links go first, sockops after a grace period in which connections redirected just
    /// before are established, then, after another in which they are accepted, the
    /// listeners close and the map entries go.
    fn unenroll(&self, leaving: Vec<(String, Enrolled)>) {
        if leaving.is_empty() {
            return;
        }
        // No new redirection first; sockops stays while the connections redirected just
        // before are established (it records their original destinations), then goes.
        for (key, _) in &leaving {
            if let Err(err) = lock(&self.capture).stop_redirecting(key) {
                tracing::error!(workload = %key, error = %err, "cannot detach capture links");
            }
        }
        std::thread::sleep(UNENROLL_GRACE);
        for (key, _) in &leaving {
            if let Err(err) = lock(&self.capture).detach(key) {
                tracing::error!(workload = %key, error = %err, "cannot detach capture links");
            }
        }
        std::thread::sleep(UNENROLL_GRACE);
        for (key, e) in leaving {
            let (cookie, ips) = (e.netns.cookie(), e.workload.ips.clone());
            // Listeners closed before returning: a workload re-enrolled in the same
            // namespace (changed addresses, cgroup or skip ports) binds the same ports.
            if e.proxy
                .is_some_and(|p| !p.close_blocking(LISTENER_CLOSE_TIMEOUT))
            {
                tracing::warn!(workload = %key, "listeners still open after {LISTENER_CLOSE_TIMEOUT:?}");
            }
            self.remove_delivery_routing(&key, &e.workload, &e.netns);
            match lock(&self.capture).forget(cookie, &ips) {
                Ok(()) => tracing::info!(workload = %key, "workload un-enrolled"),
                Err(err) => {
                    tracing::error!(workload = %key, error = %err, "cannot remove map entries")
                }
            }
        }
    }

    /// Un-enrolls everything and removes all pins (`meshd run --uninstall-on-exit`; a
    /// plain stop leaves the capture for the next agent).
    pub(crate) fn shutdown(&self) {
        let leaving = std::mem::take(&mut *lock(&self.enrolled))
            .into_iter()
            .collect();
        self.unenroll(leaving);
        let capture = lock(&self.capture);
        match capture.uninstall_own() {
            Ok(()) => {
                tracing::info!(pins = %capture.pins().root().display(), "removed pinned programs, maps and links")
            }
            Err(e) => tracing::error!(error = %e, "cannot remove pins"),
        }
    }

    /// The state the agent has applied, once any apply in progress is done (so that what
    /// `/config_dump` shows of a new state comes with its enrollment).
    pub(crate) fn applied(&self) -> Arc<State> {
        let _enrolled = lock(&self.enrolled);
        let applied = lock(&self.applied).clone();
        applied
    }

    /// The local workloads of the applied state and whether each is enrolled.
    pub(crate) fn statuses(&self) -> Vec<WorkloadStatus> {
        let enrolled = lock(&self.enrolled);
        let errors = lock(&self.errors);
        let state = lock(&self.applied).clone();
        state
            .local_workloads()
            .map(|w| {
                let key = w.key();
                let e = enrolled.get(&key);
                WorkloadStatus {
                    enrolled: e.is_some_and(|e| e.proxy.is_some()),
                    captured: e.is_some(),
                    netns_cookie: e.map(|e| e.netns.cookie()),
                    error: errors.get(&key).cloned(),
                    workload: key,
                }
            })
            .collect()
    }

    /// The local workloads that are not enrolled, each with why (for `/ready`).
    pub(crate) fn not_enrolled(&self) -> Vec<(String, String)> {
        let errors = lock(&self.errors);
        errors.iter().map(|(k, e)| (k.clone(), e.clone())).collect()
    }

    pub(crate) fn pins_root(&self) -> String {
        lock(&self.capture).pins().root().display().to_string()
    }

    /// Attached programs and links, for `/config_dump`.
    pub(crate) fn attachments(&self) -> serde_json::Value {
        lock(&self.capture).attachments()
    }

    /// Copies the kernel's per-pod refusal counters into `capture_refused_total` (at each
    /// scrape). A pod that left keeps its last values.
    pub(crate) fn update_capture_metrics(&self) {
        let metrics = &self.proxy.telemetry.metrics;
        for e in lock(&self.enrolled).values() {
            let Some(c) = self.proxy.maps.counters(e.netns.cookie()) else {
                continue;
            };
            for (reason, value) in [
                ("pending_quota", c.refused_quota),
                ("orig_dst_full", c.refused_full),
            ] {
                let labels = CaptureRefusedLabels {
                    namespace: e.workload.namespace.clone(),
                    pod: e.workload.name.clone(),
                    reason,
                };
                if value > 0 || metrics.capture_refused.get(&labels).is_some() {
                    metrics
                        .capture_refused
                        .get_or_create(&labels)
                        .inner()
                        .store(value, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// Every [`SWEEP_INTERVAL`], removes the original destinations nobody accepted for
    /// [`ORIG_DST_MAX_AGE`] (connections the agent never accepted: it died with a backlog,
    /// or a client's last handshake packet was lost), so that they stop counting against
    /// their pod's quota.
    pub(crate) async fn sweep_orig_dst(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let maps = self.proxy.maps.clone();
            match tokio::task::spawn_blocking(move || maps.sweep_orig_dst(ORIG_DST_MAX_AGE)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    tracing::info!(
                        entries = n,
                        "removed original destinations no connection was accepted for"
                    );
                    self.proxy.telemetry.metrics.orig_dst_swept.inc_by(n);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "sweeping original destinations"),
                Err(e) => tracing::error!(error = %e, "sweeping original destinations panicked"),
            }
        }
    }

    pub(crate) fn map_counts(&self) -> serde_json::Value {
        self.proxy.maps.counts()
    }
}
