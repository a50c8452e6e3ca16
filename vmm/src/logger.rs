//! Logging set-up: `tracing` to stderr, filtered by `--log` or `MOAT_VMM_LOG`
//! (default `warn`). This module owns the subscriber only.

use tracing_subscriber::EnvFilter;

/// The environment variable holding the default filter.
pub const LOG_ENV: &str = "MOAT_VMM_LOG";

/// Installs the global subscriber. A bad filter falls back to `warn` and says
/// so.
pub fn init(filter: Option<&str>) {
    let wanted = filter
        .map(str::to_owned)
        .or_else(|| std::env::var(LOG_ENV).ok())
        .unwrap_or_else(|| "warn".to_owned());
    let (env_filter, bad) = match EnvFilter::try_new(&wanted) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("warn"), Some(e)),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_ansi(false)
        .try_init();
    if installed.is_ok() {
        if let Some(e) = bad {
            tracing::warn!(filter = %wanted, error = %e, "invalid log filter; using warn");
        }
    }
}
