//! Shared by the documents tests: a tenant provisioned in-process on the
//! stack's PostgreSQL (as `tests/tests/hardening.rs` does), reached as the
//! data plane role, plus an owner connection for index DDL (what
//! `TenantContext::owner_ddl` gives handlers).

#![allow(dead_code)]

use axum::body::to_bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};
use strata_dataplane::documents::{collections, store};
use strata_dataplane::http::pagination::CursorCodec;
use strata_operator::host::LocalHost;
use strata_operator::placement::TenantNames;
use strata_operator::provision::TenantInput;
use strata_tests::operator_support::{drop_tenant_storage, provision_local, test_catalog};
use strata_tests::{TestDb, cleanup_blocking, env, unique, with_database};
use uuid::Uuid;

pub struct Tenant {
    pub id: Uuid,
    pub pool: PgPool,
    pub owner: String,
    pub codec: CursorCodec,
    _catalog: TestDb,
}

impl Tenant {
    pub async fn provision() -> Self {
        let (catalog_db, catalog) = test_catalog().await;
        let host = LocalHost {
            dir: std::env::temp_dir().join(unique("strata-documents-")),
        };
        let name: String = unique("doc")
            .replace('_', "-")
            .to_lowercase()
            .chars()
            .take(40)
            .collect();
        let input = TenantInput {
            id: Uuid::new_v4(),
            name,
            namespace: "documents".into(),
            spec: serde_json::from_value(
                serde_json::json!({"displayName": "Docs", "adminEmail": "d@example.com"}),
            )
            .expect("spec"),
            rotation: Default::default(),
        };
        provision_local(&catalog, &host, &input)
            .await
            .expect("provision");
        let names = TenantNames::for_tenant(input.id);
        let pool = PgPoolOptions::new()
            .max_connections(8)
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
            codec: CursorCodec::new(vec![9; 32], vec![]).expect("key"),
            _catalog: catalog_db,
        }
    }

    /// A connection acting as the owner (`SET ROLE`), for index DDL.
    pub async fn owner(&self) -> PgConnection {
        let ident = strata_db::ident::Ident::new(self.owner.clone()).expect("owner ident");
        let mut conn = self.pool.acquire().await.expect("conn").detach();
        sqlx::query(&format!("SET ROLE {}", ident.quoted()))
            .execute(&mut conn)
            .await
            .expect("set role owner");
        conn
    }

    /// Creates a collection and its indexes, as the handler does.
    pub async fn collection(&self, body: Value) -> store::Collection {
        let body: collections::CreateBody = serde_json::from_value(body).expect("body");
        let created = collections::create(&self.pool, body)
            .await
            .expect("create collection");
        let mut owner = self.owner().await;
        collections::build_indexes(&mut owner, &created)
            .await
            .expect("indexes");
        created
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let id = self.id;
        cleanup_blocking(drop_tenant_storage(id));
    }
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    map
}

pub async fn body(response: Response) -> (u16, HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), 64 << 20)
        .await
        .expect("body");
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub fn status<T: std::fmt::Debug>(result: &Result<T, strata_dataplane::http::ApiError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(e) => e.kind().status.as_u16(),
    }
}
