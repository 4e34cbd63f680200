//! The standalone source: a YAML file and the policy files it names, re-read when their
//! content changes. Its agent settings are read once at start-up; its workloads, services,
//! namespaces, policy settings and policy documents become a [`State`] published into the
//! [`StateStore`]. A bad edit, of the file or of a policy document, is reported (log and
//! the source's status in `/config_dump`) and the last good state, policy included, keeps
//! serving.

mod schema;
mod to_state;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

pub(crate) use schema::ConfigError;
use schema::{FileConfig, NamespaceConfig, PolicyRefused};
use to_state::to_state;

use crate::{
    policy::check::{self, PolicyFiles},
    settings::Settings,
    state::{PolicyInputs, SourceHandle, State, StateStore},
};

/// How often the file and the policy files are checked. Polling the content (not inotify)
/// also sees edits made by replacing a file, as editors and ConfigMap mounts do, and files
/// added to or removed from a policy directory.
const POLL: Duration = Duration::from_millis(250);

/// The source's name in `/config_dump`.
pub(crate) const NAME: &str = "file";

#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The agent settings in config text (for `meshd check`); `path` is only used in errors.
pub(crate) fn settings_from(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    FileConfig::parse(path, text).map(|c| c.settings())
}

pub(crate) struct FileSource {
    path: PathBuf,
    /// The settings read at start-up (admin address, bpffs root, identity).
    startup: Settings,
    handle: SourceHandle,
    /// The text of the last version read, good or bad.
    seen: String,
    /// The config in `seen`, when it is valid (its policy documents may not be).
    config: Option<FileConfig>,
    /// The policy files of `config` as last read, and their stamps then.
    seen_policy: PolicyFiles,
    seen_stamps: Vec<(PathBuf, check::FileStamp)>,
    /// The policy inputs last published and what they were built from: reused while that
    /// does not change, so that a snapshot with the same policy shares them.
    published: Published,
}

/// The policy files under `paths`, but the config file itself (when it sits in a policy
/// directory, as in a ConfigMap holding both).
fn read_policy(config_path: &Path, paths: &[PathBuf]) -> PolicyFiles {
    let mut files = check::read(paths);
    if let Ok(config) = config_path.canonicalize() {
        files
            .texts
            .retain(|(p, _)| p.canonicalize().ok().as_ref() != Some(&config));
    }
    files
}

/// What policy inputs are built from.
#[derive(Debug, Clone, PartialEq)]
struct PolicyKey {
    files: PolicyFiles,
    namespaces: Vec<NamespaceConfig>,
    default_inbound_policy: Option<String>,
    cluster_networks: Option<Vec<String>>,
}

type Published = (PolicyKey, Arc<PolicyInputs>);

/// The state of `config` with the policy documents of `files`; the previous policy
/// inputs when they are built from the same. Any refused document refuses the whole.
fn build(
    path: &Path,
    config: &FileConfig,
    files: PolicyFiles,
    previous: Option<&Published>,
) -> Result<(State, Published), ConfigError> {
    let key = PolicyKey {
        files,
        namespaces: config.namespaces.clone(),
        default_inbound_policy: config.default_inbound_policy.clone(),
        cluster_networks: config.cluster_networks.clone(),
    };
    let policy = match previous {
        Some((k, p)) if *k == key => p.clone(),
        _ => {
            let loaded = check::parse(&key.files);
            if !loaded.refused.is_empty() {
                return Err(ConfigError::Policy {
                    path: path.to_owned(),
                    refused: loaded.refused,
                });
            }
            for skipped in &loaded.skipped {
                tracing::info!("{skipped}");
            }
            Arc::new(PolicyInputs {
                set: loaded.set,
                namespaces: config.namespace_annotations(),
                default_policy: config.default_policy(),
                cluster_networks: config.cluster_networks(),
            })
        }
    };
    let state = to_state(config).with_policy(policy.clone());
    Ok((state, (key, policy)))
}

impl FileSource {
    /// Reads the file and its policy documents, registers as a source of `store` and
    /// publishes the file's state. Returns the source (to [`FileSource::watch`]) and the
    /// agent settings in the file.
    pub(crate) fn start(
        path: &Path,
        store: &Arc<StateStore>,
    ) -> Result<(FileSource, Settings), FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = FileConfig::parse(path, &text)?;
        let seen_stamps = check::stamps(&config.policy_paths(path));
        let files = read_policy(path, &config.policy_paths(path));
        let (state, published) = build(path, &config, files.clone(), None)?;
        let settings = config.settings();
        let handle = store.source(NAME, path.display().to_string());
        handle.publish(state);
        let source = FileSource {
            path: path.to_owned(),
            startup: settings.clone(),
            handle,
            seen: text,
            config: Some(config),
            seen_policy: files,
            seen_stamps,
            published,
        };
        Ok((source, settings))
    }

    /// Watches the file and its policy files, and publishes every good new version.
    pub(crate) async fn watch(mut self) {
        let mut ticker = tokio::time::interval(POLL);
        loop {
            ticker.tick().await;
            self.poll().await;
        }
    }

    async fn poll(&mut self) {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => t,
            Err(e) => {
                self.report(
                    format!("cannot read config file {}: {e}", self.path.display()),
                    None,
                );
                return;
            }
        };
        let config_changed = text != self.seen;
        if config_changed {
            self.config = match FileConfig::parse(&self.path, &text) {
                Ok(config) => Some(config),
                Err(e) => {
                    self.report(format!("{e}; keeping the last good configuration"), None);
                    None
                }
            };
            self.seen = text;
        }
        let Some(config) = &self.config else {
            return;
        };
        let paths = config.policy_paths(&self.path);
        let path = self.path.clone();
        // Stamps first (a directory walk and a stat per file); the files are read only
        // when one of them, or the config, changed.
        let read = tokio::task::spawn_blocking(move || {
            let stamps = check::stamps(&paths);
            (stamps, paths, path)
        })
        .await;
        let Ok((stamps, paths, path)) = read else {
            tracing::error!("listing the policy files failed");
            return;
        };
        if !config_changed && stamps == self.seen_stamps {
            return;
        }
        let files = match tokio::task::spawn_blocking(move || read_policy(&path, &paths)).await {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(error = %e, "reading the policy files failed");
                return;
            }
        };
        self.seen_stamps = stamps;
        if !config_changed && files == self.seen_policy {
            return;
        }
        self.seen_policy = files.clone();
        match build(&self.path, config, files, Some(&self.published)) {
            Ok((state, published)) => {
                tracing::info!(path = %self.path.display(), "config or policy changed, applying");
                for field in needs_restart(&self.startup, &config.settings()) {
                    tracing::warn!(field, "this setting changed in the config file; it takes effect when the agent restarts");
                }
                self.handle.publish(state);
                self.published = published;
            }
            Err(e) => {
                let policy = match &e {
                    ConfigError::Policy { refused, .. } => Some(PolicyRefused(refused).to_string()),
                    _ => None,
                };
                self.report(
                    format!("{e}; keeping the last good configuration and policy"),
                    policy,
                );
            }
        }
    }

    /// Records an error (and the policy documents' refusals, when that is what it is),
    /// logged once.
    fn report(&self, message: String, policy: Option<String>) {
        if self.handle.report_error(message.clone(), policy) {
            tracing::error!("{message}");
        }
    }
}

/// Settings that differ from start-up and are only read then, by their names in the file.
fn needs_restart(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if old.admin != new.admin {
        fields.push("admin");
    }
    if old.bpffs != new.bpffs {
        fields.push("bpffs");
    }
    if old.trust_domain != new.trust_domain {
        fields.push("trustDomain");
    }
    if old.identity != new.identity {
        fields.push("identity");
    }
    if old.connect_timeout != new.connect_timeout {
        fields.push("connectTimeoutMs");
    }
    if old.drain_timeout != new.drain_timeout {
        fields.push("drainTimeoutSeconds");
    }
    if old.handshake_timeout != new.handshake_timeout {
        fields.push("handshakeTimeoutMs");
    }
    if old.limits != new.limits {
        fields.push("limits");
    }
    if old.inbound != new.inbound {
        fields.push("inbound");
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        policy::{meta::POLICY_GROUP, PolicyStore},
        policy_feed::PolicyFeed,
    };

    /// F01 of the spec: a Server on port `http` of `app: web` in `shop`, allowing only
    /// `frontend`'s identity.
    const F01: &str = include_str!("../../policy/testdata/01-server-meshtls-identity.yaml");

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!("meshd-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("policies")).expect("scratch dir");
            Scratch(dir)
        }

        fn write(&self, file: &str, text: &str) {
            std::fs::write(self.0.join(file), text).expect("write");
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const CONFIG: &str = "node: n1
policy: [policies]
workloads:
  - name: web
    namespace: shop
    serviceAccount: web
    node: n2
    labels: {app: web}
    ips: [10.0.0.1]
    ports: [{name: http, containerPort: 8080}]
";

    const BAD_SERVER: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: bad, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  port: 9090
  proxyProtocol: HTTP/3
";

    const GOOD_SERVER: &str = "apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: admin, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  port: 9090
";

    fn documents(store: &StateStore) -> usize {
        store.current().policy.set.resources.len()
    }

    /// A good policy set applies; a bad document refuses the whole reload (a config edit
    /// made at the same time too): the last good config and policy stay, the error names
    /// the file, kind, object and field; fixed, it applies; unchanged files publish nothing.
    #[tokio::test]
    async fn a_refused_policy_document_keeps_the_last_good_config_and_policy() {
        let dir = Scratch::new("policy-reload");
        dir.write("config.yaml", CONFIG);
        dir.write("policies/01.yaml", F01);
        let store = StateStore::new();
        let (mut source, _) = FileSource::start(&dir.0.join("config.yaml"), &store).unwrap();
        assert_eq!(documents(&store), 3);
        assert_eq!(store.current().generation(), 1);

        dir.write("policies/02.yaml", BAD_SERVER);
        dir.write(
            "config.yaml",
            &CONFIG.replace("node: n1\n", "node: n1\ndefaultInboundPolicy: deny\n"),
        );
        source.poll().await;
        let status = &store.statuses()[0];
        let refusal = format!(
            "{}:1: Server shop/bad: spec.proxyProtocol:",
            dir.0.join("policies/02.yaml").display()
        );
        let error = status.last_error.clone().expect("an error");
        assert!(error.contains(&refusal), "{error}");
        assert!(
            error.ends_with("; keeping the last good configuration and policy"),
            "{error}"
        );
        let policy_error = status.policy_error.clone().expect("a policy error");
        assert!(
            policy_error.starts_with("1 document refused: ") && policy_error.contains(&refusal),
            "{policy_error}"
        );
        let current = store.current();
        assert_eq!((current.generation(), documents(&store)), (1, 3));
        assert_eq!(
            current.policy.default_policy,
            crate::policy::DefaultPolicy::AllUnauthenticated,
            "the config edit made with the bad document is not applied either"
        );
        // Polled again without a change: nothing new, the error stays.
        source.poll().await;
        assert_eq!(store.current().generation(), 1);
        assert!(store.statuses()[0].last_error.is_some());

        dir.write("policies/02.yaml", GOOD_SERVER);
        source.poll().await;
        let current = store.current();
        assert_eq!((current.generation(), documents(&store)), (2, 4));
        assert_eq!(
            current.policy.default_policy,
            crate::policy::DefaultPolicy::Deny
        );
        assert_eq!(store.statuses()[0].last_error, None);
        assert_eq!(store.statuses()[0].policy_error, None);
        source.poll().await;
        assert_eq!(store.current().generation(), 2, "nothing changed");

        // A config edit that leaves the policy alone shares the policy inputs.
        let before = store.current().policy.clone();
        let edited = std::fs::read_to_string(dir.0.join("config.yaml"))
            .unwrap()
            .replace("labels: {app: web}", "labels: {app: web, v: '2'}");
        dir.write("config.yaml", &edited);
        source.poll().await;
        assert_eq!(store.current().generation(), 3);
        assert!(Arc::ptr_eq(&before, &store.current().policy));

        // A file removed from the directory is a change too.
        std::fs::remove_file(dir.0.join("policies/02.yaml")).unwrap();
        source.poll().await;
        assert_eq!((store.current().generation(), documents(&store)), (4, 3));
    }

    /// A policy directory that holds the config file too (one ConfigMap for both): the
    /// config file is not read as a policy document.
    #[test]
    fn the_config_file_in_a_policy_directory_is_not_a_document() {
        let dir = Scratch::new("policy-same-dir");
        dir.write("policies/config.yaml", &CONFIG.replace("[policies]", "[.]"));
        dir.write("policies/01.yaml", F01);
        let store = StateStore::new();
        FileSource::start(&dir.0.join("policies/config.yaml"), &store).unwrap();
        assert_eq!(documents(&store), 3);
    }

    /// At start-up, a refused document or a policy path that does not exist is an error:
    /// the agent does not start.
    #[test]
    fn a_refused_policy_document_stops_the_start() {
        let dir = Scratch::new("policy-start");
        dir.write("config.yaml", CONFIG);
        dir.write("policies/02.yaml", BAD_SERVER);
        let store = StateStore::new();
        let e = FileSource::start(&dir.0.join("config.yaml"), &store)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.starts_with(&format!(
                "config file {}: policy: 1 document refused: {}:1: Server shop/bad: spec.proxyProtocol:",
                dir.0.join("config.yaml").display(),
                dir.0.join("policies/02.yaml").display()
            )),
            "{e}"
        );
        assert_eq!(store.current().generation(), 0, "nothing published");
        dir.write("config.yaml", &CONFIG.replace("[policies]", "[nowhere]"));
        let e = FileSource::start(&dir.0.join("config.yaml"), &store)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("nowhere:0: cannot read: No such file or directory"),
            "{e}"
        );
    }

    /// The compiled index the proxy reads: the workload's named port `http` (8080) is
    /// governed by F01's Server and its AuthorizationPolicy; its other ports by the
    /// default policy, which follows `defaultInboundPolicy` on a reload.
    #[test]
    fn the_published_index_governs_the_workloads_ports() {
        let path = Path::new("/etc/meshd/config.yaml");
        let files = PolicyFiles {
            texts: vec![(PathBuf::from("/etc/meshd/policies/01.yaml"), F01.into())],
            unreadable: vec![],
        };
        let mut config = FileConfig::parse(path, CONFIG).unwrap();
        // The workload runs on this node (without the namespace and cgroup checks).
        config.node = "n2".into();
        let (state, published) = build(path, &config, files.clone(), None).unwrap();
        assert_eq!(state.local_workloads().count(), 1);
        let policy = Arc::new(PolicyStore::default());
        let feed = PolicyFeed::new(policy.clone(), "cluster.local".into());
        assert!(feed.apply(&state));

        let port = policy.load().port("shop", "web", 8080);
        assert_eq!(
            port.server,
            crate::policy::meta::Meta::new(POLICY_GROUP, "server", "web-http")
        );
        let authz: Vec<&str> = port
            .authorizations
            .iter()
            .map(|a| a.meta.name.as_str())
            .collect();
        assert!(authz.contains(&"web-from-frontend"), "{authz:?}");
        let other = policy.load().port("shop", "web", 9999);
        assert_eq!(other.server.name, "all-unauthenticated");
        let status = feed.status();
        assert_eq!((status.documents, status.workloads), (3, 1));
        assert!(
            !feed.apply(&state),
            "the same inputs are not published again"
        );

        config.default_inbound_policy = Some("deny".into());
        let (state, _) = build(path, &config, files, Some(&published)).unwrap();
        assert!(feed.apply(&state));
        assert_eq!(policy.load().port("shop", "web", 9999).server.name, "deny");
        assert_eq!(
            policy.load().port("shop", "web", 8080).server.name,
            "web-http"
        );
        assert_eq!(feed.status().publications, 2);
    }
}
