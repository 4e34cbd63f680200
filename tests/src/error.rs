//! Typed errors of the harness.

use std::fmt;
use std::time::Duration;

/// Errors with enough context to tell what failed without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The harness needs root (netns, cgroups, bpffs); tests must fail, not skip.
    #[error("meshd tests need root (network namespaces, cgroups, bpffs); running as uid {uid}: run the tests as root, e.g. `sudo -E cargo xtask test`")]
    NotRoot { uid: u32 },
    /// A command exited unsuccessfully.
    #[error("command `{cmd}` failed ({status}): {stderr}")]
    CommandFailed {
        cmd: String,
        status: String,
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("could not start `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// A command or a wait did not finish in time.
    #[error("timed out after {timeout:?}: {what}")]
    Timeout { what: String, timeout: Duration },
    /// Bad argument given by the test (e.g. an invalid name).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// All the errors that a cleanup met; cleanup continues past each one.
#[derive(Debug, Default)]
pub struct CleanupErrors(pub Vec<String>);

impl CleanupErrors {
    pub(crate) fn push(&mut self, e: impl fmt::Display) {
        self.0.push(e.to_string());
    }
    pub(crate) fn push_ctx(&mut self, ctx: &str, e: impl fmt::Display) {
        self.0.push(format!("{ctx}: {e}"));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for CleanupErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cleanup had {} error(s):", self.0.len())?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CleanupErrors {}
