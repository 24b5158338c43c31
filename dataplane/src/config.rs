//! Data plane configuration: flags with environment fallbacks.

use std::net::SocketAddr;

use clap::Parser;
use strata_servicekit::LogArgs;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "strata-dataplane",
    version,
    about = "Serves Strata's database and storage APIs"
)]
pub struct Config {
    #[command(flatten)]
    pub log: LogArgs,
    /// Address to serve the API, probes and metrics on.
    #[arg(long, env = "STRATA_DATAPLANE_ADDR", default_value = "127.0.0.1:58080")]
    pub listen: SocketAddr,
    /// Connection string of the platform catalog database (read access suffices).
    #[arg(long, env = "STRATA_CATALOG_URL", hide_env_values = true)]
    pub catalog_url: String,
    /// Redis for the shared (L2) cache and rate limits.
    #[arg(long, env = "STRATA_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "STRATA_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds to finish in-flight requests after SIGTERM.
    #[arg(long, env = "STRATA_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
}
