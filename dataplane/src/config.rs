//! Data plane configuration: flags with environment fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Parser};
use strata_servicekit::LogArgs;

use sqlx::postgres::PgConnectOptions;

use crate::cache::{CacheSettings, HybridCache};
use crate::gateway::{Gateway, RateLimitSettings, RateLimiter, TrustedProxies};
use crate::http::auth::{JwksSource, JwtSettings};
use crate::http::pagination::{CursorCodec, MIN_KEY_LEN};
use crate::tenancy::TenancySettings;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "strata-dataplane",
    version,
    about = "Serves Strata's database and storage APIs",
    subcommand_negates_reqs = true
)]
pub struct Config {
    /// What to do; without one, `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub log: LogArgs,
    /// Address to serve the API, probes and metrics on.
    #[arg(long, env = "STRATA_DATAPLANE_ADDR", default_value = "127.0.0.1:28080")]
    pub listen: SocketAddr,
    /// Connection string of the platform catalog database (read access suffices).
    #[arg(
        long,
        env = "STRATA_CATALOG_URL",
        hide_env_values = true,
        required = true
    )]
    pub catalog_url: Option<String>,
    /// Redis for the shared (L2) cache and rate limits.
    #[arg(long, env = "STRATA_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "STRATA_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds to finish in-flight requests after SIGTERM.
    #[arg(long, env = "STRATA_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tenancy: TenancyArgs,
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Events: the outbox dispatcher, webhooks, idempotency keys.
    #[command(flatten)]
    pub events: crate::events::EventsArgs,
    /// Where object bytes live (shared with the operator).
    #[command(flatten)]
    pub storage: strata_storage::StorageArgs,
    #[command(flatten)]
    pub objects: ObjectArgs,
    #[command(flatten)]
    pub media: MediaArgs,
}

/// Subcommands; none means `serve` (so existing invocations keep working).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Serve the APIs (the default).
    Serve,
    /// Print the per-route policy table (gateway::policy) and exit.
    Routes {
        /// Tab-separated columns instead of aligned ones.
        #[arg(long)]
        tsv: bool,
    },
}

/// The storage API's limits, workers and antivirus (see `storage`).
#[derive(Args, Debug, Clone)]
pub struct ObjectArgs {
    /// clamd address (`host:port`) for buckets with `antivirusScan`.
    /// Unset: uploads to such buckets cannot be scanned (refused unless
    /// --antivirus-fail-open).
    #[arg(long, env = "STRATA_CLAMD_ADDR")]
    pub clamd_addr: Option<String>,
    /// Accept uploads that could not be scanned (clamd down, over its
    /// limits). Off by default: such uploads get 503.
    #[arg(long, env = "STRATA_ANTIVIRUS_FAIL_OPEN", default_value_t = false)]
    pub antivirus_fail_open: bool,
    /// Longest life of a presigned URL, in seconds (also the grace period
    /// of a rotated signing key).
    #[arg(long, env = "STRATA_PRESIGN_MAX_EXPIRY_SECONDS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(60..=7 * 24 * 3600))]
    pub presign_max_expiry_seconds: u64,
    /// Lease of quota reservations and blob intents, in seconds: what a
    /// killed data plane held is reclaimed by the sweeper after it.
    #[arg(long, env = "STRATA_UPLOAD_LEASE_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(5..=86_400))]
    pub upload_lease_seconds: u64,
    /// Seconds between sweeper passes (0: no sweeper in this process).
    #[arg(long, env = "STRATA_SWEEP_INTERVAL_SECONDS", default_value_t = 60)]
    pub sweep_interval_seconds: u64,
    /// Seconds between lifecycle passes (0: no lifecycle worker here).
    #[arg(
        long,
        env = "STRATA_LIFECYCLE_INTERVAL_SECONDS",
        default_value_t = 3600
    )]
    pub lifecycle_interval_seconds: u64,
    /// Longest an object request (an upload of a large body) may take.
    #[arg(long, env = "STRATA_OBJECT_REQUEST_TIMEOUT_SECONDS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub object_request_timeout_seconds: u64,
    /// Seconds a replaced or deleted object's blobs are kept before the
    /// sweeper deletes them, so reads already under way finish whole
    /// (0: deleted right after the change).
    #[arg(long, env = "STRATA_RETIRED_BLOB_GRACE_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub retired_blob_grace_seconds: u64,
}

impl ObjectArgs {
    pub fn settings(&self, bucket_ttl: Duration) -> crate::storage::StorageSettings {
        let max_expiry = Duration::from_secs(self.presign_max_expiry_seconds);
        crate::storage::StorageSettings {
            lease: Duration::from_secs(self.upload_lease_seconds),
            bucket_ttl,
            presign_max_expiry: max_expiry,
            presign_grace: max_expiry,
            antivirus_fail_open: self.antivirus_fail_open,
            sweep_interval: Duration::from_secs(self.sweep_interval_seconds),
            lifecycle_interval: Duration::from_secs(self.lifecycle_interval_seconds),
            request_timeout: Duration::from_secs(self.object_request_timeout_seconds),
            retired_blob_grace: Duration::from_secs(self.retired_blob_grace_seconds),
            ..crate::storage::StorageSettings::default()
        }
    }
}

/// Image transforms (`media`): how many run at once, what one may cost,
/// and the sources they accept. docs/media.md explains each limit.
#[derive(Args, Debug, Clone)]
pub struct MediaArgs {
    /// Transforms running at once in this process (beyond them: 503 with
    /// `Retry-After`). Unset: the number of CPUs.
    #[arg(long, env = "STRATA_MEDIA_TRANSFORM_SLOTS",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub media_transform_slots: Option<u64>,
    /// Milliseconds one transform (decode, resize, encode) may take; past
    /// it the request gets 503 with `Retry-After`.
    #[arg(long, env = "STRATA_MEDIA_TIME_BUDGET_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub media_time_budget_ms: u64,
    /// Largest allocation the image decoders may make, in MiB (the memory
    /// budget of one transform's decode).
    #[arg(long, env = "STRATA_MEDIA_MAX_ALLOC_MIB", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub media_max_alloc_mib: u64,
    /// Largest source object rendered, in bytes.
    #[arg(long, env = "STRATA_MEDIA_MAX_SOURCE_BYTES", default_value_t = 50 << 20,
          value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    pub media_max_source_bytes: u64,
    /// Largest source width or height, in pixels (read from the header).
    #[arg(long, env = "STRATA_MEDIA_MAX_SOURCE_SIDE", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub media_max_source_side: u32,
    /// Largest source area, in pixels (read from the header).
    #[arg(long, env = "STRATA_MEDIA_MAX_SOURCE_PIXELS", default_value_t = 40_000_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub media_max_source_pixels: u64,
    /// Largest output width or height, in pixels (`w`, `h`).
    #[arg(long, env = "STRATA_MEDIA_MAX_OUTPUT_SIDE", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=16_384))]
    pub media_max_output_side: u32,
    /// AVIF encoder speed, 1 (slowest, smallest files) to 10 (fastest);
    /// used only by builds with the `avif` feature.
    #[arg(long, env = "STRATA_MEDIA_AVIF_SPEED",
          default_value_t = crate::media::transform::DEFAULT_AVIF_SPEED,
          value_parser = clap::value_parser!(u8).range(1..=10))]
    pub media_avif_speed: u8,
}

impl MediaArgs {
    pub fn settings(&self) -> crate::media::MediaSettings {
        let defaults = crate::media::MediaSettings::default();
        crate::media::MediaSettings {
            limits: crate::media::transform::Limits {
                max_source_bytes: self.media_max_source_bytes,
                max_source_side: self.media_max_source_side,
                max_source_pixels: self.media_max_source_pixels,
                max_output_side: self.media_max_output_side,
                max_alloc: self.media_max_alloc_mib << 20,
                avif_speed: self.media_avif_speed,
            },
            time_budget: Duration::from_millis(self.media_time_budget_ms),
            concurrency: self
                .media_transform_slots
                .map_or(defaults.concurrency, |n| n as usize),
            ..defaults
        }
    }
}

/// The two-level cache (in-process L1, Redis L2 when --redis-url is set).
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// `off` makes every read go to the database; `l2` skips the
    /// in-process level (benchmarks, debugging). Not `STRATA_CACHE`: that
    /// names the build cache of the project's scripts (hack/), and a
    /// developer who moves it must not change how the data plane caches.
    #[arg(long = "cache", env = "STRATA_CACHE_MODE", default_value = "on",
          value_parser = ["on", "l2", "off"])]
    pub cache: String,
    /// L1 size bound, in MiB of encoded values.
    #[arg(long, env = "STRATA_CACHE_L1_MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub cache_l1_mib: u64,
    /// Milliseconds to wait for Redis on a cache read before using the database.
    #[arg(long, env = "STRATA_CACHE_REDIS_TIMEOUT_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=5_000))]
    pub cache_redis_timeout_ms: u64,
}

impl CacheArgs {
    /// The cache, registered for metrics, with its invalidation subscriber
    /// running when there is Redis.
    pub fn build(
        &self,
        redis: Option<redis::aio::ConnectionManager>,
        redis_url: Option<&str>,
        registry: &mut prometheus_client::registry::Registry,
    ) -> anyhow::Result<HybridCache> {
        let settings = CacheSettings {
            enabled: self.cache != "off",
            l1_enabled: self.cache == "on",
            l1_max_bytes: self.cache_l1_mib << 20,
            redis_timeout: Duration::from_millis(self.cache_redis_timeout_ms),
            ..CacheSettings::default()
        };
        let cache = HybridCache::new(settings, redis, Some(registry));
        if let Some(url) = redis_url
            && cache.is_enabled()
        {
            // Pub/sub needs a connection of its own.
            let client = redis::Client::open(url).context("invalid --redis-url")?;
            cache.spawn_subscriber(client);
        }
        Ok(cache)
    }
}

/// Request rate limits (GCRA; in Redis when --redis-url is set, so they hold
/// across replicas) and the proxies whose `X-Forwarded-For` is believed.
#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Requests per second per tenant, for Tenants without
    /// `spec.quotas.requestsPerSecond` (0: no limit).
    #[arg(long, env = "STRATA_RATE_LIMIT_TENANT_RPS", default_value_t = 1000)]
    pub rate_limit_tenant_rps: u32,
    /// Requests per second per credential (API key, or JWT subject; 0: no limit).
    #[arg(long, env = "STRATA_RATE_LIMIT_CREDENTIAL_RPS", default_value_t = 200)]
    pub rate_limit_credential_rps: u32,
    /// Requests per second per client IP without a credential (0: no limit).
    #[arg(long, env = "STRATA_RATE_LIMIT_ANONYMOUS_RPS", default_value_t = 20)]
    pub rate_limit_anonymous_rps: u32,
    /// Milliseconds to wait for Redis before limiting locally.
    #[arg(long, env = "STRATA_RATE_LIMIT_REDIS_TIMEOUT_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=5_000))]
    pub rate_limit_redis_timeout_ms: u64,
    /// Reverse proxies (CIDR, comma-separated) whose `X-Forwarded-For` is
    /// read for the client address; unset: the TCP peer is the client.
    #[arg(long, env = "STRATA_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl GatewayArgs {
    pub fn gateway(&self, redis: Option<redis::aio::ConnectionManager>) -> Gateway {
        let settings = RateLimitSettings {
            tenant_rps: self.rate_limit_tenant_rps,
            credential_rps: self.rate_limit_credential_rps,
            anonymous_rps: self.rate_limit_anonymous_rps,
            redis_timeout: Duration::from_millis(self.rate_limit_redis_timeout_ms),
            ..RateLimitSettings::default()
        };
        Gateway {
            limiter: RateLimiter::new(settings, redis),
            proxies: TrustedProxies::new(self.trusted_proxies.clone()),
        }
    }
}

/// How the data plane reaches tenant databases (see `tenancy::pools`).
#[derive(Args, Debug, Clone)]
pub struct TenancyArgs {
    /// Login for tenant databases: only its user, password and TLS settings
    /// are used (host and port come from `catalog.clusters`, the database
    /// from `catalog.tenants`). Unset: the login of --catalog-url.
    #[arg(long, env = "STRATA_TENANT_DATABASE_URL", hide_env_values = true)]
    pub tenant_database_url: Option<String>,
    /// Connections per tenant pool.
    #[arg(long, env = "STRATA_TENANT_POOL_SIZE", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub tenant_pool_size: u32,
    /// Cap on connections to tenant databases across all pools; at most
    /// this / --tenant-pool-size pools are open (least recently used closed).
    #[arg(long, env = "STRATA_TENANT_MAX_CONNECTIONS", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub tenant_max_connections: u32,
    /// Seconds a tenant pool may stay unused before it is closed.
    #[arg(long, env = "STRATA_TENANT_POOL_IDLE_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub tenant_pool_idle_seconds: u64,
    /// Milliseconds any statement on a tenant database may run.
    #[arg(long, env = "STRATA_TENANT_STATEMENT_TIMEOUT_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub tenant_statement_timeout_ms: u64,
    /// Milliseconds a catalog answer (tenant → database, state) is reused;
    /// also how long a suspension takes to reach every replica.
    #[arg(long, env = "STRATA_TENANT_CACHE_TTL_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub tenant_cache_ttl_ms: u64,
}

impl TenancyArgs {
    pub fn settings(&self, catalog_url: &str) -> anyhow::Result<TenancySettings> {
        let url = self.tenant_database_url.as_deref().unwrap_or(catalog_url);
        let login: PgConnectOptions = url
            .parse()
            .context("invalid --tenant-database-url (or --catalog-url)")?;
        let ttl = Duration::from_millis(self.tenant_cache_ttl_ms);
        Ok(TenancySettings {
            pool_size: self.tenant_pool_size,
            max_connections: self.tenant_max_connections.max(self.tenant_pool_size),
            pool_idle: Duration::from_secs(self.tenant_pool_idle_seconds),
            statement_timeout: Duration::from_millis(self.tenant_statement_timeout_ms),
            catalog_ttl: ttl,
            roles_ttl: ttl,
            ..TenancySettings::new(login)
        })
    }
}

/// Bearer JWT verification and pagination cursor keys. Without any JWT key
/// the data plane accepts API keys only.
#[derive(Args, Debug, Clone)]
pub struct AuthArgs {
    /// HS256 secret for JWTs (local use; at least 32 bytes).
    #[arg(long, env = "STRATA_JWT_HS256_SECRET", hide_env_values = true)]
    pub jwt_hs256_secret: Option<String>,
    /// JWKS URL of the identity provider, for RS256/ES256 JWTs.
    #[arg(long, env = "STRATA_JWKS_URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,
    /// JWKS file, for RS256/ES256 JWTs (re-read like the URL).
    #[arg(long, env = "STRATA_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Accepted JWT audiences (comma-separated); unset: `aud` not checked.
    #[arg(long, env = "STRATA_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Accepted JWT issuers (comma-separated); unset: `iss` not checked.
    #[arg(long, env = "STRATA_JWT_ISSUER", value_delimiter = ',')]
    pub jwt_issuer: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf`, in seconds.
    #[arg(long, env = "STRATA_JWT_LEEWAY_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub jwt_leeway_seconds: u64,
    /// Seconds between JWKS re-reads.
    #[arg(long, env = "STRATA_JWKS_MAX_AGE_SECONDS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub jwks_max_age_seconds: u64,
    /// Key (base64, at least 32 bytes) that signs pagination cursors. All
    /// replicas need the same one; unset, each process makes its own and a
    /// cursor only works on the replica that issued it.
    #[arg(long, env = "STRATA_CURSOR_KEY", hide_env_values = true)]
    pub cursor_key: Option<String>,
    /// Previous cursor keys (comma-separated base64), still accepted so a
    /// key rotation does not break the cursors clients hold.
    #[arg(
        long,
        env = "STRATA_CURSOR_PREVIOUS_KEYS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub cursor_previous_keys: Vec<String>,
}

fn decode_key(name: &str, value: &str) -> anyhow::Result<Vec<u8>> {
    let key = STANDARD
        .decode(value.trim())
        .with_context(|| format!("{name} is not base64"))?;
    anyhow::ensure!(
        key.len() >= MIN_KEY_LEN,
        "{name} must decode to at least {MIN_KEY_LEN} bytes"
    );
    Ok(key)
}

impl AuthArgs {
    /// `None` when no JWT key source is configured (API keys only).
    pub fn jwt_settings(&self) -> Option<JwtSettings> {
        let jwks = match (&self.jwks_url, &self.jwks_file) {
            (Some(url), _) => Some(JwksSource::Url(url.clone())),
            (None, Some(path)) => Some(JwksSource::File(path.clone())),
            (None, None) => None,
        };
        if jwks.is_none() && self.jwt_hs256_secret.is_none() {
            return None;
        }
        let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        Some(JwtSettings {
            hs256_secret: self
                .jwt_hs256_secret
                .as_ref()
                .map(|s| s.as_bytes().to_vec()),
            jwks,
            audience: non_empty(&self.jwt_audience),
            issuer: non_empty(&self.jwt_issuer),
            leeway: Duration::from_secs(self.jwt_leeway_seconds),
            jwks_max_age: Duration::from_secs(self.jwks_max_age_seconds),
            ..JwtSettings::default()
        })
    }

    /// The cursor codec; a random per-process key when none is configured.
    pub fn cursor_codec(&self) -> anyhow::Result<CursorCodec> {
        let current = match &self.cursor_key {
            Some(key) => decode_key("--cursor-key", key)?,
            None => {
                tracing::warn!(
                    "no --cursor-key: pagination cursors are valid on this process only"
                );
                let mut key = vec![0u8; MIN_KEY_LEN];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
                key
            }
        };
        let previous = self
            .cursor_previous_keys
            .iter()
            .map(|k| decode_key("--cursor-previous-keys", k))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(CursorCodec::new(current, previous)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["strata-dataplane", "--catalog-url", "postgres://x"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
    }

    #[test]
    fn defaults_accept_api_keys_only_with_a_process_cursor_key() {
        let config = parse(&[]).expect("parse");
        assert!(config.auth.jwt_settings().is_none());
        assert!(config.auth.cursor_codec().is_ok());
    }

    #[test]
    fn jwt_settings_from_flags() {
        let config = parse(&[
            "--jwks-url",
            "https://id.example/jwks",
            "--jwt-audience",
            "strata,api",
            "--jwt-leeway-seconds",
            "5",
        ])
        .expect("parse");
        let settings = config.auth.jwt_settings().expect("jwt");
        assert!(matches!(settings.jwks, Some(JwksSource::Url(_))));
        assert_eq!(
            settings.audience,
            Some(vec!["strata".to_string(), "api".to_string()])
        );
        assert_eq!(settings.issuer, None);
        assert_eq!(settings.leeway, Duration::from_secs(5));
        assert!(parse(&["--jwt-leeway-seconds", "3600"]).is_err());
        assert!(parse(&["--jwks-url", "u", "--jwks-file", "f"]).is_err());
    }

    #[test]
    fn tenancy_defaults_and_login_fallback() {
        let config = parse(&[]).expect("parse");
        let settings = config
            .tenancy
            .settings("postgres://dp:pw@db:5432/strata_platform")
            .expect("settings");
        assert_eq!(settings.pool_size, 4);
        assert_eq!(settings.max_connections, 200);
        assert_eq!(settings.catalog_ttl, Duration::from_secs(2));
        assert!(parse(&["--tenant-pool-size", "0"]).is_err());
        let config = parse(&["--tenant-database-url", "not a url"]).expect("parse");
        assert!(config.tenancy.settings("postgres://x").is_err());
    }

    #[test]
    fn media_defaults_and_flags() {
        let settings = parse(&[]).expect("parse").media.settings();
        let defaults = crate::media::MediaSettings::default();
        assert_eq!(settings.time_budget, defaults.time_budget);
        assert_eq!(settings.concurrency, defaults.concurrency);
        assert_eq!(
            format!("{:?}", settings.limits),
            format!("{:?}", defaults.limits)
        );
        let settings = parse(&[
            "--media-transform-slots",
            "3",
            "--media-time-budget-ms",
            "1",
            "--media-max-alloc-mib",
            "64",
            "--media-max-source-pixels",
            "1000",
        ])
        .expect("parse")
        .media
        .settings();
        assert_eq!(settings.concurrency, 3);
        assert_eq!(settings.time_budget, Duration::from_millis(1));
        assert_eq!(settings.limits.max_alloc, 64 << 20);
        assert_eq!(settings.limits.max_source_pixels, 1000);
        assert!(parse(&["--media-transform-slots", "0"]).is_err());
        assert!(parse(&["--media-avif-speed", "11"]).is_err());
    }

    #[test]
    fn cursor_keys_are_checked() {
        let key = STANDARD.encode([1u8; 32]);
        let config = parse(&["--cursor-key", &key, "--cursor-previous-keys", &key]).expect("parse");
        assert!(config.auth.cursor_codec().is_ok());
        let short = STANDARD.encode([1u8; 16]);
        let config = parse(&["--cursor-key", &short]).expect("parse");
        assert!(config.auth.cursor_codec().is_err());
        let config = parse(&["--cursor-key", "not base64!"]).expect("parse");
        assert!(config.auth.cursor_codec().is_err());
        let config =
            parse(&["--cursor-key", &key, "--cursor-previous-keys", &short]).expect("parse");
        assert!(config.auth.cursor_codec().is_err());
    }
}
