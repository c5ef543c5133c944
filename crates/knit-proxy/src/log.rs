//! Logging: `tracing` with an env-filter that the admin server can change at runtime, plain or
//! JSON lines on stderr. Access-log events use the target `access`.

use crate::config::{LogConfig, LogFormat};
use std::sync::Arc;
use tracing_subscriber::{layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Registry};

/// Reads and replaces the active filter.
#[derive(Clone)]
pub struct LogLevel {
    handle: Arc<reload::Handle<EnvFilter, Registry>>,
}

impl LogLevel {
    pub fn get(&self) -> String {
        self.handle.with_current(|f| f.to_string()).unwrap_or_default()
    }

    /// Replaces the filter; the old one stays if `directives` does not parse.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(directives.trim()).map_err(|e| format!("invalid log level {directives:?}: {e}"))?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Installs the global subscriber. Call once per process (binaries do; in-process tests do not).
pub fn init(cfg: &LogConfig) -> LogLevel {
    let filter = EnvFilter::try_new(&cfg.filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    // try_init: a second call (tests that embed several proxies) keeps the first subscriber.
    let _ = match cfg.format {
        LogFormat::Json => registry.with(fmt.json().with_current_span(true).with_span_list(false)).try_init(),
        LogFormat::Plain => registry.with(fmt).try_init(),
    };
    LogLevel { handle: Arc::new(handle) }
}
