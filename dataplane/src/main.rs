use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use clap::Parser;
use prometheus_client::registry::Registry;
use sqlx::postgres::PgPoolOptions;
use strata_dataplane::app::{AppState, Services, router};
use strata_dataplane::config::{Command, Config};
use strata_dataplane::http::HttpContext;
use strata_dataplane::http::auth::{Authenticator, JwtVerifier};
use strata_dataplane::tenancy::Tenancy;
use strata_servicekit::shutdown_signal;

/// mimalloc rather than glibc's malloc: a request allocates and frees many
/// small buffers across the worker threads, and glibc's arenas cost about a
/// quarter of the data plane's CPU on a cached GET (bench/README.md,
/// "Document GET with the two-level cache").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if let Some(Command::Routes { tsv }) = config.command {
        print!("{}", strata_dataplane::gateway::policy::render(tsv));
        return Ok(());
    }
    // Required by clap unless a subcommand is given (`serve` names it).
    let catalog_url = config
        .catalog_url
        .clone()
        .context("--catalog-url (STRATA_CATALOG_URL) is required")?;
    config.log.init();
    strata_servicekit::install_crypto_provider();
    // Lazy: the process starts (and /healthz answers) while the database is
    // still coming up; /readyz reports it until then.
    let catalog = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(&catalog_url)
        .context("invalid --catalog-url")?;
    let redis = match &config.redis_url {
        Some(url) => {
            let client = redis::Client::open(url.as_str()).context("invalid --redis-url")?;
            Some(
                redis::aio::ConnectionManager::new(client)
                    .await
                    .context("connecting to Redis")?,
            )
        }
        None => None,
    };
    let jwt = match config.auth.jwt_settings() {
        Some(settings) => {
            let verifier = JwtVerifier::new(settings).context("JWT settings")?;
            // A JWKS that cannot be read now may be readable later (the
            // provider may start after us): warn, and retry on demand.
            match verifier.load_keys().await {
                Ok(Some(count)) => tracing::info!(count, "JWKS loaded"),
                Ok(None) => {}
                Err(error) => tracing::warn!(error = format!("{error:#}"), "JWKS not loaded yet"),
            }
            Some(verifier)
        }
        None => {
            tracing::info!("no JWT key configured: API keys only");
            None
        }
    };
    let http = HttpContext {
        // API keys live in each tenant's database: `tenancy::TenantContext`
        // looks them up there, so this authenticator verifies JWTs only.
        auth: Authenticator::new(jwt, None),
        cursors: config.auth.cursor_codec()?,
        gateway: config.gateway.gateway(redis.clone()),
    };
    let mut registry = Registry::default();
    let cache = config
        .cache
        .build(redis.clone(), config.redis_url.as_deref(), &mut registry)?;
    let tenancy = Tenancy::new(catalog.clone(), config.tenancy.settings(&catalog_url)?)
        .with_cache(cache.clone());
    // The backend must answer at startup: a misconfigured store fails here
    // rather than on the first upload.
    let backend = strata_storage::connect(&config.storage)
        .await
        .context("object storage backend")?;
    let scanner = config.objects.clamd_addr.as_ref().map(|addr| {
        Arc::new(strata_storage::antivirus::Scanner::new(addr.clone()))
            as Arc<dyn strata_dataplane::storage::antivirus::Scanner>
    });
    let mut storage = strata_dataplane::storage::StorageState::new(
        backend,
        catalog.clone(),
        scanner,
        config
            .objects
            .settings(Duration::from_millis(config.tenancy.tenant_cache_ttl_ms)),
    )
    // Bucket rules live in the same two-level cache as everything else.
    .with_cache(tenancy.cache.clone());
    // Image transforms: slots, time and memory budgets, source limits.
    storage.media = Arc::new(strata_dataplane::media::Media::new(config.media.settings()));
    let events = config.events.settings();
    strata_dataplane::events::settings::install(events.clone());
    strata_dataplane::events::metrics::register(&mut registry);
    let registry = Arc::new(registry);
    if events.dispatcher {
        // Pub/sub (dispatch hints) needs a connection of its own.
        let hints = match &config.redis_url {
            Some(url) => Some(redis::Client::open(url.as_str()).context("invalid --redis-url")?),
            None => None,
        };
        strata_dataplane::events::Dispatcher::new(
            tenancy.clone(),
            catalog.clone(),
            redis.clone(),
            hints,
            events,
        )?
        // Stale image variants are removed from their source's events.
        .with_sink(strata_dataplane::media::variants::StaleVariants::new(
            storage.clone(),
        ))
        .spawn();
        tracing::info!("outbox dispatcher running");
    }
    let state = AppState::from(Services {
        catalog,
        redis,
        http,
        tenancy,
        storage,
    });
    // Sweeper (orphaned blobs, expired reservations) and lifecycle rules.
    strata_dataplane::storage::sweeper::spawn_workers(state.clone());
    let app = router(state, registry, config.max_body_bytes);
    // No Nagle: an answer written in more than one piece (a streamed body's
    // last chunk) must not wait for the client's delayed ACK.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?
        .tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "TCP_NODELAY not set");
            }
        });
    tracing::info!(addr = %config.listen, "serving");
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // The peer address is the client's for rate limits (or a trusted
    // proxy's, see gateway::client_ip).
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        // Writes on other replicas stop waiting for this one's
        // acknowledgements; requests still in flight read through L2.
        cache.leave().await;
        let _ = tx.send(());
    });
    // Stop waiting for slow clients once the grace period is over.
    tokio::select! {
        result = server.into_future() => result?,
        () = async { let _ = rx.await; tokio::time::sleep(grace).await } => {
            tracing::warn!("grace period over; closing remaining connections");
        }
    }
    tracing::info!("stopped");
    Ok(())
}
