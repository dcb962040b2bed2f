//! Log output: human-readable lines by default, JSON objects for collectors, filtered by `log_level`.

use tracing_subscriber::EnvFilter;
use veneer_config::{Config, LogFormat};

/// Installs the global subscriber; call once, before the runtime starts.
pub fn init(config: &Config) -> Result<(), String> {
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| format!("invalid setting log_level: '{}': {e}", config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| format!("cannot install logger: {e}"))
}
