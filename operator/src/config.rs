//! Operator configuration: flags with environment fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use strata_servicekit::LogArgs;

use crate::provision::Step;

#[derive(Parser, Debug)]
#[command(
    name = "strata-operator",
    version,
    about = "Reconciles Strata Tenant resources into provisioned tenant databases",
    // `apply` has its own flags; the controller's are not required with it.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the controller against the Kubernetes API (the default).
    Run,
    /// Provisions the tenant in a manifest once, without a cluster, printing each step.
    Apply(ApplyArgs),
}

/// Settings shared by `run` and `apply`.
#[derive(Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Admin connection string of the default database cluster.
    #[arg(long, env = "STRATA_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Name of the platform (catalog) database on the default cluster.
    #[arg(
        long,
        env = "STRATA_PLATFORM_DATABASE",
        default_value = "strata_platform"
    )]
    pub platform_database: String,
    /// The data plane's login role on the default cluster: the operator
    /// creates it without a password if missing and grants it its rights
    /// in the catalog and in every tenant database (docs/clusters.md).
    #[arg(
        long,
        env = "STRATA_DATAPLANE_ROLE",
        default_value = crate::cluster::DEFAULT_DATAPLANE_ROLE
    )]
    pub dataplane_role: String,
    /// Base URL of the data plane API, reported in tenant status.
    #[arg(long, env = "STRATA_API_BASE_URL")]
    pub api_base_url: Option<String>,
    /// Lifetime of admin invitations, in hours.
    #[arg(long, env = "STRATA_INVITE_TTL_HOURS", default_value_t = 168, value_parser = clap::value_parser!(i64).range(1..=8760))]
    pub invite_ttl_hours: i64,
    /// How long an operator statement may wait for a lock held by someone else
    /// (e.g. a tenant's own session) before the step fails and is retried.
    #[arg(long, env = "STRATA_DB_LOCK_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_lock_timeout: Duration,
    /// How long one operator statement may run.
    #[arg(long, env = "STRATA_DB_STATEMENT_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub db_statement_timeout: Duration,
    /// Test only: fail right after this provisioning step, as if the process crashed.
    #[arg(long, env = "STRATA_FAULT_AFTER_STEP", hide = true, value_parser = parse_step)]
    pub fault_after_step: Option<Step>,
}

/// `250ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 250ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 250ms, 5s or 2m")),
    }
}

fn parse_step(s: &str) -> Result<Step, String> {
    Step::parse(s).ok_or_else(|| format!("unknown step {s:?}"))
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: Option<DatabaseArgs>,
    /// Address of the /healthz, /readyz and /metrics endpoints.
    #[arg(
        long,
        env = "STRATA_OPERATOR_PROBE_ADDR",
        default_value = "127.0.0.1:28081"
    )]
    pub probe_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "STRATA_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Tenants reconciled in parallel.
    #[arg(long, env = "STRATA_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Upper bound on one reconcile of one tenant; past it the reconcile is
    /// abandoned and retried with backoff, so no tenant holds a worker longer.
    #[arg(long, env = "STRATA_RECONCILE_DEADLINE", default_value = "180s", value_parser = parse_duration)]
    pub reconcile_deadline: Duration,
    /// Namespace holding the platform team's `strata-cluster-<name>` Secrets
    /// (database clusters Tenants may name). Default: the operator's namespace.
    #[arg(long, env = "STRATA_CLUSTER_NAMESPACE")]
    pub cluster_namespace: Option<String>,
    /// Hold a Lease before reconciling, so only one replica acts.
    #[arg(long, env = "STRATA_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "STRATA_LEASE_NAME", default_value = "strata-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease and Events (default: hostname-pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Where bucket bytes live: the Bucket controller checks it and empties a
    /// bucket's prefix on forced deletion. Must match the data plane's.
    #[command(flatten)]
    pub storage: strata_storage::StorageArgs,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Tenant manifest (YAML).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Where Secrets are written (as 0600 JSON files).
    #[arg(long, env = "STRATA_STATE_DIR", default_value = ".strata-state")]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub db: DatabaseArgs,
}

impl DatabaseArgs {
    /// `origin`: `kubernetes` for the controller, `offline` for `apply`.
    pub fn settings(&self, origin: &'static str) -> crate::provision::ProvisionSettings {
        crate::provision::ProvisionSettings {
            origin,
            api_base_url: self.api_base_url.clone(),
            invite_ttl_hours: self.invite_ttl_hours,
            fault_after: self.fault_after_step,
        }
    }

    pub fn session_limits(&self) -> crate::cluster::SessionLimits {
        crate::cluster::SessionLimits {
            lock_timeout: self.db_lock_timeout,
            statement_timeout: self.db_statement_timeout,
        }
    }
}

impl RunArgs {
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "local".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "5h", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
