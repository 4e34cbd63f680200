//! The standalone source: a YAML file, re-read when its content changes. A bad edit is
//! reported (log and `/config_dump`) and the last good state keeps serving.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{agent::Agent, config::Config, state::State};

/// How often the file is checked. Polling the content (not inotify) also sees edits made by
/// replacing the file, as editors and ConfigMap mounts do.
const POLL: Duration = Duration::from_millis(250);

pub struct FileSource {
    pub path: PathBuf,
    /// The settings read once at start-up (admin address, bpffs root, identity).
    startup: Config,
    /// The last reload error, cleared by the next good file.
    pub last_error: Arc<Mutex<Option<String>>>,
}

impl FileSource {
    pub fn new(path: PathBuf, startup: Config) -> FileSource {
        FileSource {
            path,
            startup,
            last_error: Arc::default(),
        }
    }

    /// Watches the file and applies every good new version to the agent.
    pub async fn watch(self: Arc<Self>, agent: Arc<Agent>, mut applied: String) {
        let mut ticker = tokio::time::interval(POLL);
        loop {
            ticker.tick().await;
            let text = match tokio::fs::read_to_string(&self.path).await {
                Ok(t) => t,
                Err(e) => {
                    self.report(format!(
                        "cannot read config file {}: {e}",
                        self.path.display()
                    ));
                    continue;
                }
            };
            if text == applied {
                continue;
            }
            match Config::parse(&self.path, &text) {
                Ok(config) => {
                    tracing::info!(path = %self.path.display(), "config changed, applying");
                    for field in self.needs_restart(&config) {
                        tracing::warn!(field, "this setting changed in the config file; it takes effect when the agent restarts");
                    }
                    let agent = agent.clone();
                    let state = State::from_config(&config);
                    // Enrollment does blocking set-up work (namespaces, bpf syscalls).
                    if let Err(e) = tokio::task::spawn_blocking(move || agent.apply(state)).await {
                        tracing::error!(error = %e, "applying config panicked");
                    }
                    *self.lock() = None;
                }
                Err(e) => self.report(format!("{e}; keeping the last good configuration")),
            }
            applied = text;
        }
    }

    /// Settings that differ from start-up and are only read then.
    fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let old = &self.startup;
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
        if old.connect_timeout_ms != new.connect_timeout_ms {
            fields.push("connectTimeoutMs");
        }
        fields
    }

    fn report(&self, message: String) {
        let mut last = self.lock();
        if last.as_deref() != Some(&message) {
            tracing::error!("{message}");
        }
        *last = Some(message);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_error.lock().unwrap_or_else(|p| p.into_inner())
    }
}
