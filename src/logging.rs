//! Log setup: tracing to stderr (journald picks it up under systemd).
//!
//! Filter precedence: `RUST_LOG` when set, else `[log] level`, else `info`.
//! Nothing secret is logged: the config holds no credentials (they come from the AWS
//! credential chain) and endpoints with `user:password@` are rejected by validation.

use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

/// The filter string that wins, and where it came from (for the startup log line).
pub fn effective_filter(cfg: &LogConfig, rust_log: Option<&str>) -> (String, &'static str) {
    match (rust_log.map(str::trim).filter(|s| !s.is_empty()), &cfg.level) {
        (Some(env), _) => (env.to_string(), "RUST_LOG"),
        (None, Some(level)) => (level.clone(), "config [log] level"),
        (None, None) => ("info".to_string(), "default"),
    }
}

/// Installs the global subscriber. Fails on a bad filter or when one is already set.
pub fn init(cfg: &LogConfig) -> anyhow::Result<()> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, source) = effective_filter(cfg, rust_log.as_deref());
    let env_filter = EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| anyhow::anyhow!("log filter `{filter}` from {source}: {e}"))?;
    // Colour only on a terminal: under systemd, escape codes would litter the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let res = if cfg.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
    res.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    tracing::debug!(filter, source, json = cfg.json, "logging initialised");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_then_config_then_info() {
        let with = LogConfig {
            level: Some("warn".into()),
            json: false,
        };
        assert_eq!(
            effective_filter(&with, Some("debug")),
            ("debug".into(), "RUST_LOG")
        );
        assert_eq!(
            effective_filter(&with, None),
            ("warn".into(), "config [log] level")
        );
        assert_eq!(
            effective_filter(&with, Some("  ")),
            ("warn".into(), "config [log] level")
        );
        assert_eq!(
            effective_filter(&LogConfig::default(), None),
            ("info".into(), "default")
        );
    }
}
