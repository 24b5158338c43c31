//! Shared by the vector tests: a tenant provisioned in-process on the
//! stack's PostgreSQL, reached as the data plane role, and generated data.

#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use strata_dataplane::vectors::index::{OwnerConnector, owner_connector};
use strata_dataplane::vectors::model::{Metric, ValidItem, VectorCollection};
use strata_dataplane::vectors::store;
use strata_operator::host::LocalHost;
use strata_operator::placement::TenantNames;
use strata_operator::provision::TenantInput;
use strata_tests::operator_support::{drop_tenant_storage, provision_local, test_catalog};
use strata_tests::{TestDb, cleanup_blocking, env, unique, with_database};
use uuid::Uuid;

pub struct Tenant {
    pub id: Uuid,
    /// The tenant database as the data plane role (what `ctx.pool()` is).
    pub pool: PgPool,
    pub owner: String,
    _catalog: TestDb,
}

impl Tenant {
    pub async fn provision() -> Self {
        let (catalog_db, catalog) = test_catalog().await;
        let host = LocalHost {
            dir: std::env::temp_dir().join(unique("strata-vectors-")),
        };
        let name = unique("vec").replace('_', "-").to_lowercase();
        let name: String = name.chars().take(40).collect();
        let input = TenantInput {
            id: Uuid::new_v4(),
            name,
            namespace: "vectors".into(),
            spec: serde_json::from_value(
                serde_json::json!({"displayName": "Vectors", "adminEmail": "v@example.com"}),
            )
            .expect("spec"),
            rotation: Default::default(),
        };
        provision_local(&catalog, &host, &input)
            .await
            .expect("provision");
        let names = TenantNames::for_tenant(input.id);
        let pool = PgPoolOptions::new()
            .max_connections(6)
            .connect(&with_database(
                &env("STRATA_DATAPLANE_DATABASE_URL"),
                names.database.as_str(),
            ))
            .await
            .expect("data plane role connects to the tenant database");
        Self {
            id: input.id,
            pool,
            owner: names.owner.as_str().to_string(),
            _catalog: catalog_db,
        }
    }

    pub fn connector(&self) -> OwnerConnector {
        owner_connector(self.pool.clone(), self.owner.clone())
    }

    /// Fresh planner statistics (the data plane role does not own the
    /// table, so as the owner).
    pub async fn analyze(&self) {
        let mut conn = (self.connector())().await.expect("owner connection");
        sqlx::query("ANALYZE embeddings")
            .execute(&mut conn)
            .await
            .expect("analyze");
    }

    /// Creates a collection the way the collections API will (its CRUD is
    /// another module's) and returns its vector configuration.
    pub async fn collection(&self, name: &str, dimension: i32, metric: Metric) -> VectorCollection {
        sqlx::query(
            "INSERT INTO collections (name, vector_dimension, vector_metric, hnsw_m, hnsw_ef_construction) \
             VALUES ($1, $2, $3, 16, 64)",
        )
        .bind(name)
        .bind(dimension)
        .bind(metric.as_str())
        .execute(&self.pool)
        .await
        .expect("create collection");
        self.reload(name).await
    }

    pub async fn reload(&self, name: &str) -> VectorCollection {
        store::find_collection(&self.pool, name)
            .await
            .expect("collection")
    }

    pub async fn insert(&self, collection: &VectorCollection, items: &[ValidItem]) {
        for chunk in items.chunks(1000) {
            store::upsert(&self.pool, collection, chunk)
                .await
                .expect("upsert");
        }
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let id = self.id;
        cleanup_blocking(drop_tenant_storage(id));
    }
}

/// Clustered data: `clusters` centres uniform in [-1, 1]^dim, points
/// Gaussian around them (σ = `spread`). Deterministic for a seed.
pub struct Clustered {
    rng: StdRng,
    centres: Vec<Vec<f32>>,
    spread: f32,
}

impl Clustered {
    pub fn new(seed: u64, dim: usize, clusters: usize, spread: f32) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let centres = (0..clusters)
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
            .collect();
        Self {
            rng,
            centres,
            spread,
        }
    }

    fn gaussian(&mut self) -> f32 {
        // Box-Muller.
        let u1: f32 = self.rng.random_range(f32::EPSILON..1.0);
        let u2: f32 = self.rng.random_range(0.0..1.0);
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    pub fn point(&mut self) -> (usize, Vec<f32>) {
        let c = self.rng.random_range(0..self.centres.len());
        let centre = self.centres[c].clone();
        let spread = self.spread;
        (
            c,
            centre
                .iter()
                .map(|x| x + spread * self.gaussian())
                .collect(),
        )
    }

    pub fn items(&mut self, prefix: &str, n: usize) -> Vec<ValidItem> {
        (0..n)
            .map(|i| {
                let (cluster, vector) = self.point();
                ValidItem {
                    id: format!("{prefix}{i}"),
                    vector,
                    metadata: serde_json::json!({"cluster": cluster, "bucket": i % 100}),
                    document_id: None,
                }
            })
            .collect()
    }
}

/// Exact distance as pgvector computes it (f64 accumulation).
pub fn distance(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    match metric {
        Metric::L2 => a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
            .sum::<f64>()
            .sqrt(),
        Metric::InnerProduct => -dot,
        Metric::Cosine => {
            let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            1.0 - dot / (na * nb)
        }
    }
}

/// Brute-force top-k ids over `(label, items)` sets.
pub fn exact_top_k(
    metric: Metric,
    sets: &[(&str, &[ValidItem])],
    query: &[f32],
    k: usize,
) -> Vec<(String, String)> {
    let mut all: Vec<(f64, String, String)> = sets
        .iter()
        .flat_map(|(label, items)| {
            items.iter().map(move |i| {
                (
                    distance(metric, &i.vector, query),
                    label.to_string(),
                    i.id.clone(),
                )
            })
        })
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().take(k).map(|(_, c, i)| (c, i)).collect()
}
