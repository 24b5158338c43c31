//! The platform database that holds the catalog: created on the default
//! cluster if missing, then migrated.

use std::str::FromStr;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use strata_db::{Catalog, Ident, migrations};

use crate::cluster::DEFAULT_DATAPLANE_ROLE;

/// Connects to (creating if needed) the platform database and migrates it.
pub async fn open(admin_url: &str, database: &str) -> anyhow::Result<Catalog> {
    let db = Ident::new(database)?;
    let admin = PgConnectOptions::from_str(admin_url)?;
    let admin_pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(admin.clone())
        .await?;
    // Replicas starting together would race on CREATE DATABASE and on the
    // grants ("tuple concurrently updated"): one at a time, under a session
    // lock held on the admin connection until the catalog is ready.
    sqlx::query("SELECT pg_advisory_lock(hashtext('strata.platform-setup'))")
        .execute(&admin_pool)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(db.as_str())
            .fetch_one(&admin_pool)
            .await?;
    if !exists {
        match sqlx::query(&format!("CREATE DATABASE {}", db.quoted()))
            .execute(&admin_pool)
            .await
        {
            Ok(_) => tracing::info!(database = %db, "created platform database"),
            // Another replica created it first: 42P04 when it had
            // committed, 23505 (pg_database's unique name index) when both
            // ran at the same moment.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Tenant roles log in to the same cluster: they must not reach the catalog.
    sqlx::query(&format!(
        "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
        db.quoted()
    ))
    .execute(&admin_pool)
    .await?;
    let pool: PgPool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(
            admin
                .database(db.as_str())
                .application_name("strata-operator"),
        )
        .await?;
    let version = migrations::run(&migrations::PLATFORM, &pool).await?;
    grant_dataplane_read(&pool, &db).await?;
    // Ends the session, and with it the setup lock.
    admin_pool.close().await;
    tracing::info!(database = %db, schema_version = version, "platform catalog ready");
    Ok(Catalog::new(pool))
}

/// The data plane resolves tenants from `catalog.tenants` and
/// `catalog.clusters` (and bucket rules from `catalog.buckets`) with its own
/// role: read access to those tables only
/// (never to `catalog.owner_credentials`).
/// Skipped while the role does not exist yet; the next start grants it.
async fn grant_dataplane_read(pool: &PgPool, db: &Ident) -> anyhow::Result<()> {
    let role = Ident::new(DEFAULT_DATAPLANE_ROLE)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(role.as_str())
            .fetch_one(pool)
            .await?;
    if !exists {
        tracing::info!(role = %role, "data plane role not found; catalog read access not granted yet");
        return Ok(());
    }
    let role = role.quoted();
    for statement in [
        format!("GRANT CONNECT ON DATABASE {} TO {role}", db.quoted()),
        format!("GRANT USAGE ON SCHEMA catalog TO {role}"),
        format!("GRANT SELECT ON catalog.tenants, catalog.clusters, catalog.buckets TO {role}"),
    ] {
        sqlx::query(&statement).execute(pool).await?;
    }
    Ok(())
}
