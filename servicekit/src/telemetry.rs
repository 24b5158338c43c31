//! Logging: human-readable text by default, one JSON object per line when asked
//! (what log pipelines in a cluster expect).

use clap::{Args, ValueEnum};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging flags, flattened into each binary's config.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log output format.
    #[arg(long, env = "STRATA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info,strata_operator=debug`.
    #[arg(
        long,
        env = "STRATA_LOG",
        default_value = "info,sqlx::postgres::notice=warn"
    )]
    pub log: String,
}

impl LogArgs {
    /// Installs the global subscriber. Call once, first thing in `main`.
    /// Logs go to stderr, so command output on stdout stays clean.
    pub fn init(&self) {
        let filter = EnvFilter::try_new(&self.log).unwrap_or_else(|e| {
            eprintln!("invalid --log filter {:?} ({e}); using `info`", self.log);
            EnvFilter::new("info")
        });
        let registry = tracing_subscriber::registry().with(filter);
        match self.log_format {
            LogFormat::Text => registry
                .with(fmt::layer().with_writer(std::io::stderr).with_target(true))
                .init(),
            LogFormat::Json => registry
                .with(
                    fmt::layer()
                        .json()
                        .with_writer(std::io::stderr)
                        .flatten_event(true)
                        .with_current_span(true),
                )
                .init(),
        }
    }
}
