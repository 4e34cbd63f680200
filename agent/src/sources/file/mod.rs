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
    /// The policy files of `config` as last read.
    seen_policy: PolicyFiles,
    /// The policy inputs last published and what they were built from: reused while that
    /// does not change, so that a snapshot with the same policy shares them.
    published: Published,
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
        let files = check::read(&config.policy_paths(path));
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
        let files = match tokio::task::spawn_blocking(move || check::read(&paths)).await {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(error = %e, "reading the policy files failed");
                return;
            }
        };
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
                    ConfigError::Policy { refused, .. } => {
                        Some(PolicyRefused(refused).to_string())
                    }
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
    fields
}
