//! Logging: tracing to stderr (text or JSON lines), with a filter that the admin API can
//! change at runtime (`PUT /log-level`). The eBPF programs' aya-log records arrive through
//! the `log` bridge.

use std::sync::OnceLock;

use tracing_subscriber::{
    layer::SubscriberExt as _, reload, util::SubscriberInitExt as _, EnvFilter, Registry,
};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

pub fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let registry = tracing_subscriber::registry().with(filter);
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        registry.with(fmt.json()).init();
    } else {
        registry.with(fmt).init();
    }
}

/// The current filter, e.g. `info,meshd=debug`.
pub fn current() -> Option<String> {
    FILTER.get()?.with_current(|f| f.to_string()).ok()
}

/// Replaces the filter; a bad one is refused with the parser's message.
pub fn set(filter: &str) -> Result<String, String> {
    let parsed = EnvFilter::try_new(filter.trim())
        .map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
    let handle = FILTER.get().ok_or("logging is not initialised")?;
    handle.reload(parsed).map_err(|e| e.to_string())?;
    let now = current().unwrap_or_default();
    tracing::info!(filter = %now, "log level changed");
    Ok(now)
}
