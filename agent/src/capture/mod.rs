//! Capture: loading meshd's eBPF programs, pinning them, and attaching them per workload.
//!
//! The kernel side is described in `ebpf/meshd-ebpf`. Here the agent keeps the bpffs layout
//! of [`pins`] true: a link pinned under `links/<namespace>_<name>/` exists exactly while a
//! workload is enrolled. On start-up the agent adopts the links an earlier instance pinned
//! (pointing them at the programs it just loaded). A stopping agent leaves them in place for
//! the next one (as a crash does); `meshd uninstall` or `--uninstall-on-exit` removes
//! everything.

pub mod counters;
pub mod link;
pub mod maps;
pub mod pins;
pub mod programs;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{maps::MapError, programs::ProgramError, EbpfLoader};
use meshd_common::PodConfig;

pub use maps::Maps;
pub use pins::PinPaths;
pub use programs::Hook;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("bpffs: {0}")]
    Bpffs(String),
    #[error("loading the eBPF object: {}", chain(.0))]
    Load(#[from] aya::EbpfError),
    #[error("eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("program {program}: {}", chain(source))]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("program {program}: link cannot be pinned: {reason}")]
    NotALink {
        program: &'static str,
        reason: String,
    },
    #[error("map {map}: {}", chain(source))]
    Map { map: &'static str, source: MapError },
    #[error("pin {path}: {reason}")]
    Pin { path: PathBuf, reason: String },
    #[error("cannot open {kind} {path}: {source}")]
    Target {
        kind: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("adopting link {path}: {source}")]
    Adopt {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An error and its sources on one line: aya's errors keep the errno in their source.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What the capture layer needs to know about a workload to enroll it.
pub struct Enrollment<'a> {
    /// `namespace/name`.
    pub key: &'a str,
    pub cgroup: &'a Path,
    pub netns: &'a Path,
    pub netns_cookie: u64,
    pub ips: &'a [IpAddr],
    pub pod: PodConfig,
    pub skip_inbound_ports: &'a [u16],
    pub skip_outbound_ports: &'a [u16],
    /// The agent's inbound listener for each pod address (for sk_lookup).
    pub listeners: Vec<(IpAddr, std::os::fd::RawFd)>,
}

pub struct Capture {
    ebpf: aya::Ebpf,
    maps: Arc<Maps>,
    pins: PinPaths,
    /// Workloads whose links an earlier agent pinned and this one adopted at start-up.
    adopted: BTreeSet<String>,
    /// Adopted workloads enrolled again whose sk_lookup link still runs the earlier agent's
    /// instance (by namespace cookie), until [`Capture::renew_sk_lookups`].
    earlier_sk_lookup: BTreeMap<String, u64>,
    /// Trees an agent of another pin version left (an upgrade): removed workload by
    /// workload once this agent captures it, see [`Capture::retire_other_versions`].
    other_versions: Vec<PinPaths>,
    /// The aya-log level compiled into the programs, for the per-pod sk_lookup instances.
    log_level: u8,
    _logger: Option<tokio::task::JoinHandle<()>>,
}

/// aya-log's ring buffer. Pinned with the maps, so that the per-pod sk_lookup instances
/// (and those a restarted agent adopts) log into the buffer the agent reads.
const AYA_LOGS: &str = "AYA_LOGS";

/// One pod's sk_lookup program: the object loaded again with the pod's namespace cookie as
/// `NETNS_COOKIE` (the shared maps reused from their pins), only sk_lookup loaded in the
/// kernel. Once its link is pinned the instance can go: the link holds the program.
struct SkLookupInstance {
    ebpf: aya::Ebpf,
}

impl SkLookupInstance {
    fn load(pins: &PinPaths, log_level: u8, netns_cookie: u64) -> Result<Self, CaptureError> {
        let started = std::time::Instant::now();
        let logs = pins.maps().join(AYA_LOGS);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.maps())
            .map_pin_path(AYA_LOGS, &logs)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .override_global(meshd_common::SK_LOOKUP_NETNS_COOKIE, &netns_cookie, true)
            .load(programs::OBJECT)?;
        // Parsing the object and opening its maps: nearly all of the cost.
        let object_us = started.elapsed().as_micros() as u64;
        Hook::SkLookup.load(&mut ebpf)?;
        tracing::debug!(
            object_us,
            netns_cookie,
            load_us = started.elapsed().as_micros() as u64,
            "sk_lookup instance loaded"
        );
        Ok(SkLookupInstance { ebpf })
    }
}

fn pin_err(path: &Path) -> impl Fn(std::io::Error) -> CaptureError + '_ {
    move |e| CaptureError::Pin {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

impl Capture {
    /// Loads and pins the programs and maps under `pins`, adopting whatever links an earlier
    /// agent left there. Must be called inside a tokio runtime (for the eBPF log reader).
    pub fn load(pins: PinPaths) -> Result<Capture, CaptureError> {
        ensure_bpffs(pins.root())?;
        for dir in [pins.maps(), pins.progs(), pins.links()] {
            std::fs::create_dir_all(&dir).map_err(pin_err(&dir))?;
        }
        let level = ebpf_log_level();
        let logs = pins.maps().join(AYA_LOGS);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pins.maps())
            .map_pin_path(AYA_LOGS, &logs)
            .override_global("AYA_LOG_LEVEL", &level, false)
            .load(programs::OBJECT)?;
        let logger = spawn_log_reader(&mut ebpf);
        // sk_lookup is loaded per pod (`SkLookupInstance`), not here.
        for hook in Hook::ALL.into_iter().filter(|h| *h != Hook::SkLookup) {
            hook.load(&mut ebpf)?;
            hook.pin(&mut ebpf, &pins.prog(hook.program()))?;
        }
        let maps = Arc::new(Maps::take_from(&mut ebpf)?);
        // One agent per pin root: entries left by one that was killed mid-connect go.
        maps.clear_deliveries()
            .map_err(|source| CaptureError::Map {
                map: meshd_common::maps::DELIVERY,
                source,
            })?;
        let other_versions = pins.other_versions();
        for other in &other_versions {
            tracing::info!(
                pins = %other.root().display(),
                version = other.version(),
                "found the capture of an agent of another pin version: each of its workloads keeps it until this agent captures that workload"
            );
        }
        let mut capture = Capture {
            ebpf,
            maps,
            pins,
            log_level: level,
            adopted: BTreeSet::new(),
            earlier_sk_lookup: BTreeMap::new(),
            other_versions,
            _logger: logger,
        };
        capture.adopt()?;
        Ok(capture)
    }

    pub fn maps(&self) -> &Arc<Maps> {
        &self.maps
    }

    pub fn pins(&self) -> &PinPaths {
        &self.pins
    }

    /// Points every pinned link at the programs this agent loaded.
    fn adopt(&mut self) -> Result<(), CaptureError> {
        let dir = self.pins.links();
        let entries = std::fs::read_dir(&dir).map_err(pin_err(&dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = PinPaths::workload_key(&name) else {
                continue;
            };
            // sk_lookup keeps its program (the earlier agent's instance for this pod, which
            // has the pod's namespace cookie; the link cannot tell this one the cookie)
            // until the workload is enrolled again.
            for hook in Hook::ALL.into_iter().filter(|h| *h != Hook::SkLookup) {
                let path = entry.path().join(hook.link_name());
                if !path.exists() {
                    continue;
                }
                let fd = hook.prog_fd(&self.ebpf)?;
                match link::update_pinned(&path, fd) {
                    Ok(()) => {}
                    // Its cgroup is gone (the pod was deleted while no agent ran): the link
                    // captures nothing any more. Dropped; enrolling the workload again
                    // attaches a new one.
                    Err(e) if e.raw_os_error() == Some(libc::ENOLINK) => {
                        tracing::info!(workload = %key, link = %path.display(), "dropping an adopted link whose {} is gone", hook.target_kind());
                        std::fs::remove_file(&path).map_err(pin_err(&path))?;
                    }
                    Err(source) => {
                        return Err(CaptureError::Adopt {
                            path: path.clone(),
                            source,
                        })
                    }
                }
            }
            tracing::info!(workload = %key, "adopted pinned capture links");
            self.adopted.insert(key);
        }
        Ok(())
    }

    /// Starts capturing a workload: map entries first (the listeners already exist), then the
    /// links, so that no connection is redirected to a listener that is not there.
    pub fn enroll(&mut self, e: &Enrollment<'_>) -> Result<(), CaptureError> {
        let adopted = self.adopted.contains(e.key);
        if adopted {
            self.drop_links_to_other_targets(e)?;
        }
        self.maps.set_pod(e.netns_cookie, e.pod)?;
        self.maps
            .set_skip_out(e.netns_cookie, e.skip_outbound_ports)?;
        self.maps.set_skip_in(e.ips, e.skip_inbound_ports)?;
        for (ip, fd) in &e.listeners {
            self.maps.set_listener(*ip, *fd)?;
        }
        // After the listeners: an enrolled address without its listener is refused.
        self.maps.set_pod_addrs(e.netns_cookie, e.ips)?;
        let dir = self.pins.workload_links(e.key);
        std::fs::create_dir_all(&dir).map_err(pin_err(&dir))?;
        for hook in ATTACH_ORDER {
            let path = dir.join(hook.link_name());
            if hook == Hook::SkLookup {
                self.attach_sk_lookup(e, &path, adopted)?;
                continue;
            }
            if path.exists() {
                // Adopted from an earlier agent and already running our program.
                continue;
            }
            let target_path = if hook == Hook::SkLookup {
                e.netns
            } else {
                e.cgroup
            };
            let target = File::open(target_path).map_err(|source| CaptureError::Target {
                kind: hook.target_kind(),
                path: target_path.to_owned(),
                source,
            })?;
            let link = hook.attach(&mut self.ebpf, &target)?;
            link.pin(&path).map_err(|e| CaptureError::Pin {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        self.adopted.remove(e.key);
        tracing::debug!(workload = e.key, "capture links pinned");
        self.remove_other_versions_links(e.key);
        Ok(())
    }

    /// Detaches the links an agent of another pin version left for a workload that this
    /// agent captures now: both attached, the other agent's sk_lookup would refuse every
    /// connection to the pod (its listener map is empty) and its connect4 would redirect
    /// with an original destination this agent cannot read.
    fn remove_other_versions_links(&self, key: &str) {
        for other in &self.other_versions {
            let dir = other.workload_links(key);
            if !dir.exists() {
                continue;
            }
            match remove_links(&dir) {
                Ok(()) => tracing::info!(
                    workload = key,
                    version = other.version(),
                    "detached the capture links of pin version {} (now captured by this agent)",
                    other.version()
                ),
                Err(err) => tracing::warn!(
                    workload = key,
                    version = other.version(),
                    error = %err,
                    "cannot remove the capture links of another pin version"
                ),
            }
        }
    }

    /// Removes what agents of other pin versions left: the links of workloads that are not
    /// in `desired` (those in it lose theirs when this agent captures them, in
    /// [`Capture::enroll`]; until then they keep failing closed), then, once a tree has no
    /// link left, its programs and maps and the tree itself. Called after each reconcile.
    pub fn retire_other_versions(&mut self, desired: &BTreeSet<String>) {
        self.other_versions.retain(|other| {
            let dirs: Vec<PathBuf> = std::fs::read_dir(other.links())
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            let mut left = 0;
            for dir in dirs {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let key = PinPaths::workload_key(&name);
                if key.as_ref().is_some_and(|k| desired.contains(k)) {
                    left += 1;
                    continue;
                }
                match remove_links(&dir) {
                    Ok(()) => tracing::info!(
                        workload = key.as_deref().unwrap_or(&name),
                        version = other.version(),
                        "detached the capture links of pin version {} (workload not in the config)",
                        other.version()
                    ),
                    Err(err) => {
                        left += 1;
                        tracing::warn!(pins = %dir.display(), error = %err, "cannot remove the capture links of another pin version");
                    }
                }
            }
            if left > 0 {
                return true;
            }
            let pinned = PinnedIds::of(other);
            match uninstall(other) {
                Ok(()) => {
                    pinned.wait_released(true);
                    tracing::info!(
                        pins = %other.root().display(),
                        version = other.version(),
                        "removed the capture of pin version {}: its links are detached and its programs and maps unpinned",
                        other.version()
                    );
                    false
                }
                Err(err) => {
                    tracing::warn!(pins = %other.root().display(), error = %err, "cannot remove the pins of another pin version");
                    true
                }
            }
        });
    }

    /// Removes the adopted links of a workload that are not attached to its cgroup or
    /// namespace as they are now: the pod was deleted and recreated while no agent ran (a
    /// StatefulSet pod keeps its name), and such a link captures nothing (or another
    /// cgroup). The enrollment then attaches new ones.
    fn drop_links_to_other_targets(&self, e: &Enrollment<'_>) -> Result<(), CaptureError> {
        use std::os::unix::fs::MetadataExt;
        let ino = |kind: &'static str, path: &Path| {
            std::fs::metadata(path)
                .map(|m| m.ino())
                .map_err(|source| CaptureError::Target {
                    kind,
                    path: path.to_owned(),
                    source,
                })
        };
        let cgroup = link::LinkTarget::Cgroup(ino("cgroup", e.cgroup)?);
        let netns = link::LinkTarget::Netns(ino("network namespace", e.netns)? as u32);
        let dir = self.pins.workload_links(e.key);
        for hook in Hook::ALL {
            let path = dir.join(hook.link_name());
            if !path.exists() {
                continue;
            }
            let expected = if hook == Hook::SkLookup {
                netns
            } else {
                cgroup
            };
            match link::pinned_target(&path) {
                Ok(target) if target == expected => continue,
                Ok(target) => {
                    tracing::info!(workload = e.key, link = %path.display(), ?target, ?expected, "an adopted link is not attached to the pod's {} as it is now (recreated while no agent ran): replaced", hook.target_kind())
                }
                Err(err) => {
                    tracing::info!(workload = e.key, link = %path.display(), error = %err, "an adopted link cannot be read: replaced")
                }
            }
            std::fs::remove_file(&path).map_err(pin_err(&path))?;
        }
        Ok(())
    }

    /// The pod's own sk_lookup instance, attached to its network namespace. A link this
    /// agent made already runs this agent's instance for the pod: kept. A link adopted from
    /// an earlier agent keeps that agent's instance for the pod (the same maps, the same
    /// cookie) until [`Capture::renew_sk_lookups`]: loading an instance takes most of an
    /// enrollment's time, which after a restart would hold every pod's outbound listener
    /// back (they accept once the whole reconcile is done, see `proxy/accept_gate.rs`).
    fn attach_sk_lookup(
        &mut self,
        e: &Enrollment<'_>,
        path: &Path,
        adopted: bool,
    ) -> Result<(), CaptureError> {
        if path.exists() {
            if adopted {
                self.earlier_sk_lookup
                    .insert(e.key.to_string(), e.netns_cookie);
            }
            return Ok(());
        }
        let mut instance = SkLookupInstance::load(&self.pins, self.log_level, e.netns_cookie)?;
        let target = File::open(e.netns).map_err(|source| CaptureError::Target {
            kind: Hook::SkLookup.target_kind(),
            path: e.netns.to_owned(),
            source,
        })?;
        let link = Hook::SkLookup.attach(&mut instance.ebpf, &target)?;
        link.pin(path).map_err(|err| CaptureError::Pin {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
        Ok(())
    }

    /// Puts this agent's own sk_lookup instance in the links of adopted workloads that were
    /// enrolled again (see [`Capture::attach_sk_lookup`]). A failure leaves the earlier
    /// agent's instance, which steers the same way, and is logged.
    pub fn renew_sk_lookups(&mut self) {
        for (key, netns_cookie) in std::mem::take(&mut self.earlier_sk_lookup) {
            let path = self
                .pins
                .workload_links(&key)
                .join(Hook::SkLookup.link_name());
            if !path.exists() {
                continue;
            }
            let renewed = SkLookupInstance::load(&self.pins, self.log_level, netns_cookie)
                .and_then(|i| {
                    let fd = Hook::SkLookup.prog_fd(&i.ebpf)?;
                    link::update_pinned(&path, fd).map_err(|source| CaptureError::Adopt {
                        path: path.clone(),
                        source,
                    })
                });
            if let Err(err) = renewed {
                tracing::warn!(workload = %key, error = %err, "cannot renew the sk_lookup program of an adopted link: the earlier agent's stays");
            }
        }
    }

    /// Stops redirecting a workload's new connections: removes its connect4, connect6 and
    /// sk_lookup links, and keeps sockops, which records the original destination of
    /// connections redirected a moment ago once they are established, and sock_release,
    /// which forgets those that close first (until [`Capture::detach`]).
    pub fn stop_redirecting(&mut self, key: &str) -> Result<(), CaptureError> {
        let dir = self.pins.workload_links(key);
        for hook in DETACH_ORDER
            .into_iter()
            .filter(|h| !matches!(h, Hook::SockOps | Hook::SockRelease))
        {
            let path = dir.join(hook.link_name());
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(pin_err(&path)(e)),
            }
        }
        Ok(())
    }

    /// Stops capturing a workload's new connections: removes its links (unpinning
    /// detaches them). Its map entries stay until [`Capture::forget`], so connections
    /// redirected a moment ago still find their original destination.
    pub fn detach(&mut self, key: &str) -> Result<(), CaptureError> {
        self.adopted.remove(key);
        self.earlier_sk_lookup.remove(key);
        remove_links(&self.pins.workload_links(key))
    }

    /// Removes a pod's map entries (after [`Capture::detach`]).
    pub fn forget(&self, netns_cookie: u64, ips: &[IpAddr]) -> Result<(), CaptureError> {
        self.maps.remove_pod(netns_cookie, ips)
    }

    /// Removes links of adopted workloads that are not enrolled again, and map entries that
    /// belong to no enrolled pod (left by an agent that was killed mid-way).
    pub fn prune(&mut self, live_cookies: &BTreeSet<u64>, live_ips: &[IpAddr]) {
        for key in std::mem::take(&mut self.adopted) {
            tracing::info!(workload = %key, "removing capture links of a workload no longer in the config");
            if let Err(e) = remove_links(&self.pins.workload_links(&key)) {
                tracing::warn!(workload = %key, error = %e, "cannot remove stale links");
            }
        }
        let ips: Vec<meshd_common::IpAddr> = live_ips.iter().map(|ip| maps::ip_key(*ip)).collect();
        if let Err(e) = self
            .maps
            .retain(|c| live_cookies.contains(&c), |ip| ips.contains(ip))
        {
            tracing::warn!(error = %e, "pruning stale map entries");
        }
    }

    /// What is attached where, for `/config_dump`: the loaded programs' ids, and per
    /// enrolled workload each pinned link with its link and program ids.
    pub fn attachments(&self) -> serde_json::Value {
        let mut programs = serde_json::Map::new();
        for hook in Hook::ALL {
            let id = self
                .ebpf
                .program(hook.program())
                .and_then(|p| p.info().ok())
                .map(|i| i.id());
            programs.insert(hook.program().to_string(), serde_json::json!(id));
        }
        let mut workloads = serde_json::Map::new();
        if let Ok(entries) = std::fs::read_dir(self.pins.links()) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(key) = PinPaths::workload_key(&name) else {
                    continue;
                };
                let links: Vec<serde_json::Value> = Hook::ALL
                    .iter()
                    .filter_map(|hook| {
                        let path = entry.path().join(hook.link_name());
                        let link: aya::programs::links::FdLink =
                            aya::programs::links::PinnedLink::from_pin(&path)
                                .ok()?
                                .into();
                        let info = link.info().ok()?;
                        Some(serde_json::json!({
                            "hook": hook.link_name(),
                            "attachedTo": hook.target_kind(),
                            "pin": path,
                            "linkId": info.id(),
                            "programId": info.program_id(),
                        }))
                    })
                    .collect();
                workloads.insert(key, serde_json::Value::Array(links));
            }
        }
        serde_json::json!({ "programs": programs, "links": workloads })
    }

    /// Removes everything under the versioned pin directory: links (detaching them), programs
    /// and maps (`meshd uninstall`). Returns once the kernel has released the links and the
    /// programs (at most [`RELEASE_WAIT`]; a warning names what it has not).
    pub fn uninstall(pins: &PinPaths) -> Result<(), CaptureError> {
        let pinned = PinnedIds::of(pins);
        uninstall(pins)?;
        pinned.wait_released(true);
        Ok(())
    }

    /// [`Capture::uninstall`] by the agent that loaded the programs (`--uninstall-on-exit`):
    /// it holds them until it exits, so only the links are waited for.
    pub fn uninstall_own(&self) -> Result<(), CaptureError> {
        let pinned = PinnedIds::of(&self.pins);
        uninstall(&self.pins)?;
        pinned.wait_released(false);
        Ok(())
    }
}

/// sockops and sock_release before connect4/6: a connection redirected by connect4 must
/// find sockops attached when it is established, or its original destination is never
/// recorded and the agent has to close it; and sock_release when it is closed first, or
/// its entry stays counted against the pod's quota.
const ATTACH_ORDER: [Hook; 5] = [
    Hook::SockOps,
    Hook::SockRelease,
    Hook::SkLookup,
    Hook::Connect4,
    Hook::Connect6,
];
/// The reverse: connect4/6 go first, sockops and sock_release last.
const DETACH_ORDER: [Hook; 5] = [
    Hook::Connect4,
    Hook::Connect6,
    Hook::SkLookup,
    Hook::SockOps,
    Hook::SockRelease,
];

/// Unpins (detaches) a workload's links in [`DETACH_ORDER`], then any other link in the
/// directory (one of another pin version's hooks), and removes the directory.
fn remove_links(dir: &Path) -> Result<(), CaptureError> {
    if !dir.exists() {
        return Ok(());
    }
    for hook in DETACH_ORDER {
        let path = dir.join(hook.link_name());
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_err(&path)(e)),
        }
    }
    let rest: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(pin_err(dir))?
        .flatten()
        .map(|e| e.path())
        .collect();
    for path in rest {
        std::fs::remove_file(&path).map_err(pin_err(&path))?;
    }
    std::fs::remove_dir(dir).map_err(pin_err(dir))
}

/// How long uninstalling waits for the kernel to release what was unpinned.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The kernel ids of the links and programs pinned under a pin root. Unpinning the last
/// reference releases a link (which detaches it) or a program in a kernel work item, a
/// moment after `unlink` returns: these ids are what to wait for.
struct PinnedIds {
    links: Vec<u32>,
    programs: Vec<u32>,
}

impl PinnedIds {
    fn of(pins: &PinPaths) -> PinnedIds {
        let files = |dir: PathBuf| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let links = files(pins.links())
            .into_iter()
            .flat_map(files)
            .filter_map(|path| {
                let link: aya::programs::links::FdLink =
                    aya::programs::links::PinnedLink::from_pin(&path)
                        .ok()?
                        .into();
                Some(link.info().ok()?.id())
            })
            .collect();
        let programs = files(pins.progs())
            .into_iter()
            .filter_map(|path| Some(aya::programs::ProgramInfo::from_pin(&path).ok()?.id()))
            .collect();
        PinnedIds { links, programs }
    }

    /// Waits until none of the links (and, with `programs`, none of the programs) is
    /// loaded any more, at most [`RELEASE_WAIT`].
    fn wait_released(&self, programs: bool) {
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        loop {
            let links: Vec<u32> = aya::programs::loaded_links()
                .filter_map(Result::ok)
                .map(|l| l.id())
                .filter(|id| self.links.contains(id))
                .collect();
            let progs: Vec<u32> = if programs {
                aya::programs::loaded_programs()
                    .filter_map(Result::ok)
                    .map(|p| p.id())
                    .filter(|id| self.programs.contains(id))
                    .collect()
            } else {
                Vec::new()
            };
            if links.is_empty() && progs.is_empty() {
                return;
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(?links, programs = ?progs, "unpinned, but the kernel has not released these yet");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

fn uninstall(pins: &PinPaths) -> Result<(), CaptureError> {
    let root = pins.root();
    if !root.exists() {
        return Ok(());
    }
    if let Ok(entries) = std::fs::read_dir(pins.links()) {
        for entry in entries.flatten() {
            remove_links(&entry.path())?;
        }
    }
    for dir in [pins.links(), pins.progs(), pins.maps()] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                std::fs::remove_file(entry.path()).map_err(pin_err(&entry.path()))?;
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_err(&dir)(e)),
        }
    }
    std::fs::remove_dir(root).map_err(pin_err(root))?;
    // The unversioned parent goes too when nothing else (another version) is in it.
    if let Some(parent) = root.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Checks that the pin root is on a bpffs mount (creating the directory if needed).
fn ensure_bpffs(root: &Path) -> Result<(), CaptureError> {
    std::fs::create_dir_all(root).map_err(|e| {
        CaptureError::Bpffs(format!(
            "cannot create {}: {e} (is bpffs mounted? mount -t bpf bpf /sys/fs/bpf)",
            root.display()
        ))
    })?;
    let st = nix::sys::statfs::statfs(root)
        .map_err(|e| CaptureError::Bpffs(format!("statfs {}: {e}", root.display())))?;
    if st.filesystem_type().0 as i64 != BPF_FS_MAGIC {
        let _ = std::fs::remove_dir(root);
        return Err(CaptureError::Bpffs(format!(
            "{} is not on a bpffs mount: mount -t bpf bpf /sys/fs/bpf",
            root.display()
        )));
    }
    Ok(())
}

/// The aya-log level compiled into the programs' filter: what tracing will show anyway.
fn ebpf_log_level() -> u8 {
    use tracing::Level;
    let enabled = |l| match l {
        Level::TRACE => tracing::enabled!(target: "meshd_ebpf", Level::TRACE),
        Level::DEBUG => tracing::enabled!(target: "meshd_ebpf", Level::DEBUG),
        _ => tracing::enabled!(target: "meshd_ebpf", Level::INFO),
    };
    if enabled(Level::TRACE) {
        5
    } else if enabled(Level::DEBUG) {
        4
    } else {
        3
    }
}

/// The programs' log records carry the eBPF object's module path (`meshd::connect4`: its
/// crate is named `meshd`, like the agent's). They are logged under `meshd_ebpf::connect4`
/// etc. instead: the target that [`ebpf_log_level`] reads, so that `meshd_ebpf=debug`
/// both makes the programs emit their per-connection lines and lets them through the
/// agent's filter (`meshd=debug` includes them too: filter targets match by prefix).
fn ebpf_target(target: &str) -> String {
    match target.strip_prefix("meshd::") {
        Some(rest) => format!("meshd_ebpf::{rest}"),
        None if target == "meshd" => "meshd_ebpf".to_string(),
        None => format!("meshd_ebpf::{target}"),
    }
}

/// Forwards the programs' records to the global `log` logger (which tracing picks up)
/// under [`ebpf_target`].
struct EbpfLog;

impl log::Log for EbpfLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let target = ebpf_target(metadata.target());
        log::logger().enabled(
            &log::Metadata::builder()
                .level(metadata.level())
                .target(&target)
                .build(),
        )
    }

    fn log(&self, record: &log::Record<'_>) {
        let target = ebpf_target(record.target());
        log::logger().log(
            &log::Record::builder()
                .args(*record.args())
                .level(record.level())
                .target(&target)
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        log::logger().flush();
    }
}

/// Forwards aya-log records from the programs into `log`, which tracing picks up.
fn spawn_log_reader(ebpf: &mut aya::Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match aya_log::EbpfLogger::init_with_logger(ebpf, EbpfLog) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF logs unavailable");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd owns the logger.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF logs unavailable");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}

#[cfg(test)]
mod log_target_tests {
    use super::ebpf_target;

    #[test]
    fn ebpf_records_are_logged_under_meshd_ebpf() {
        assert_eq!(ebpf_target("meshd::connect4"), "meshd_ebpf::connect4");
        assert_eq!(ebpf_target("meshd::sk_lookup"), "meshd_ebpf::sk_lookup");
        assert_eq!(ebpf_target("meshd"), "meshd_ebpf");
        assert_eq!(ebpf_target("other"), "meshd_ebpf::other");
    }
}
