//! Test support: each test gets its own database, Redis key prefix, S3 bucket
//! and Kubernetes namespace on the running local stack (`make stack-up`), so
//! tests run in parallel and never see each other's data. Everything a test
//! creates is removed when its handle drops.
//!
//! Connection settings come from the environment, or from `.stack/env` written
//! by the stack script.

use std::collections::HashMap;
use std::sync::OnceLock;

pub mod kube_support;
pub mod operator_support;
pub mod process;
pub use kube_support::{TestNamespace, admin_client, operator_client};

/// Settings of the running stack.
pub fn env(key: &str) -> String {
    strata_servicekit::install_crypto_provider();
    try_env(key).unwrap_or_else(|| {
        panic!("{key} is not set and not in .stack/env: run `make stack-up` first")
    })
}

pub fn try_env(key: &str) -> Option<String> {
    if let Ok(v) = std::env::var(key) {
        return Some(v);
    }
    stack_env().get(key).cloned()
}

/// A stack setting from `.stack/env` when the stack wrote one, else from the
/// environment: for settings that must name the local stack, never another
/// cluster the shell happens to point at.
pub fn stack_env_first(key: &str) -> String {
    strata_servicekit::install_crypto_provider();
    stack_env().get(key).cloned().unwrap_or_else(|| env(key))
}

/// The repository root.
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stack_env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let text = std::fs::read_to_string(repo_root().join(".stack/env")).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("export ").or(Some(l.trim())))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_string(),
                    v.trim().trim_matches(['"', '\'']).to_string(),
                )
            })
            .collect()
    })
}

/// A unique, lowercase, identifier-safe suffix.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Runs async cleanup from `Drop`, on a runtime of its own (the test's runtime
/// may be shutting down).
pub fn cleanup_blocking<F>(f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = std::thread::spawn(move || {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(f),
            Err(e) => eprintln!("cleanup runtime: {e}"),
        }
    });
    let _ = handle.join();
}

/// A fresh database on the stack's PostgreSQL, dropped afterwards.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: sqlx::PgPool,
    admin_url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let admin_url = env("STRATA_DATABASE_URL");
        let name = unique("test_");
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .expect("connect to the stack's PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("connect to test database");
        Self {
            name,
            url,
            pool,
            admin_url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // FORCE ends the test's own connections too. The test's pool is bound
        // to the test's runtime (blocked in this drop), so it is not touched.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        cleanup_blocking(async move {
            if let Ok(admin) = sqlx::PgPool::connect(&admin_url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&admin)
                    .await;
            }
        });
    }
}

/// Replaces the database of a PostgreSQL URL.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if i > "postgres://".len() => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// A Redis connection whose keys live under a prefix of their own.
pub struct TestRedis {
    pub prefix: String,
    pub conn: redis::aio::MultiplexedConnection,
    url: String,
}

impl TestRedis {
    pub async fn new() -> Self {
        let url = env("STRATA_REDIS_URL");
        let client = redis::Client::open(url.as_str()).expect("redis url");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the stack's Redis");
        Self {
            prefix: format!("{}:", unique("test:")),
            conn,
            url,
        }
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let (url, pattern) = (self.url.clone(), format!("{}*", self.prefix));
        cleanup_blocking(async move {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
            }
        });
    }
}

/// An S3 client for the stack's server.
pub async fn s3_client() -> aws_sdk_s3::Client {
    let credentials = aws_sdk_s3::config::Credentials::new(
        env("STRATA_S3_ACCESS_KEY_ID"),
        env("STRATA_S3_SECRET_ACCESS_KEY"),
        None,
        None,
        "strata-tests",
    );
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(env("STRATA_S3_REGION")))
        .endpoint_url(env("STRATA_S3_ENDPOINT"))
        .credentials_provider(credentials)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A fresh bucket, emptied and deleted afterwards.
pub struct TestBucket {
    pub name: String,
    pub client: aws_sdk_s3::Client,
}

impl TestBucket {
    pub async fn new() -> Self {
        let client = s3_client().await;
        let name = unique("test-");
        client
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .expect("create test bucket");
        Self { name, client }
    }
}

impl Drop for TestBucket {
    fn drop(&mut self) {
        // A client of its own: the test's client is bound to the test's runtime.
        let bucket = self.name.clone();
        cleanup_blocking(async move {
            let client = s3_client().await;
            if let Ok(list) = client.list_objects_v2().bucket(&bucket).send().await {
                for obj in list.contents() {
                    if let Some(key) = obj.key() {
                        let _ = client.delete_object().bucket(&bucket).key(key).send().await;
                    }
                }
            }
            let _ = client.delete_bucket().bucket(&bucket).send().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://u:p@h:1/postgres", "x"),
            "postgres://u:p@h:1/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
    }
}
