//! The standalone source: a YAML file, re-read when its content changes. Its agent settings
//! are read once at start-up; its workloads and services become a [`State`] published into
//! the [`StateStore`]. A bad edit is reported (log and the source's status in
//! `/config_dump`) and the last good state keeps serving.

mod schema;
mod to_state;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

pub(crate) use schema::ConfigError;
use schema::FileConfig;
use to_state::to_state;

use crate::{
    settings::Settings,
    state::{SourceHandle, StateStore},
};

/// How often the file is checked. Polling the content (not inotify) also sees edits made by
/// replacing the file, as editors and ConfigMap mounts do.
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
}

impl FileSource {
    /// Reads the file, registers as a source of `store` and publishes the file's state.
    /// Returns the source (to [`FileSource::watch`]) and the agent settings in the file.
    pub(crate) fn start(
        path: &Path,
        store: &Arc<StateStore>,
    ) -> Result<(FileSource, Settings), FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = FileConfig::parse(path, &text)?;
        let settings = config.settings();
        let handle = store.source(NAME, path.display().to_string());
        handle.publish(to_state(&config));
        let source = FileSource {
            path: path.to_owned(),
            startup: settings.clone(),
            handle,
            seen: text,
        };
        Ok((source, settings))
    }

    /// Watches the file and publishes every good new version.
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
                self.report(format!(
                    "cannot read config file {}: {e}",
                    self.path.display()
                ));
                return;
            }
        };
        if text == self.seen {
            return;
        }
        match FileConfig::parse(&self.path, &text) {
            Ok(config) => {
                tracing::info!(path = %self.path.display(), "config changed, applying");
                for field in needs_restart(&self.startup, &config.settings()) {
                    tracing::warn!(field, "this setting changed in the config file; it takes effect when the agent restarts");
                }
                self.handle.publish(to_state(&config));
            }
            Err(e) => self.report(format!("{e}; keeping the last good configuration")),
        }
        self.seen = text;
    }

    fn report(&self, message: String) {
        if self.handle.report_error(message.clone()) {
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
